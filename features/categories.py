"""Item categories derived from a product description, for catalogs that have none (the Online Retail data).

The rule, reproducible and documented in docs/data.md: upper-case the description, split into words; the first
taxonomy entry (in the fixed order below) with a keyword among the words gives the top level; the head noun is the
last word that is not a colour, size, number or filler. Categories are `[top, top/head]`, `other` when nothing matches.
"""

from __future__ import annotations

import re

# Order matters: the first match wins ("CHRISTMAS CANDLE" is christmas, "CANDLE HOLDER" is candles & lights).
TAXONOMY: tuple[tuple[str, frozenset[str]], ...] = tuple(
    (name, frozenset(words.split()))
    for name, words in (
        ("christmas", "CHRISTMAS XMAS ADVENT SANTA REINDEER SNOWFLAKE SNOWMAN NOEL"),
        ("easter", "EASTER BUNNY EGG EGGS CHICK"),
        ("candles & lights", "CANDLE CANDLES T-LIGHT TLIGHT LANTERN LIGHT LIGHTS LAMP NIGHTLIGHT TEALIGHT CANDLEHOLDER"),
        ("bags", "BAG BAGS JUMBO SHOPPER TOTE PURSE RUCKSACK BACKPACK"),
        ("party", "PARTY BALLOON BALLOONS BUNTING GARLAND CAKE CAKESTAND CUPCAKE DOILY DOILIES NAPKINS STRAWS CONFETTI"),
        ("kitchen & dining", "MUG MUGS CUP CUPS SAUCER TEAPOT TEA COFFEE PLATE PLATES BOWL BOWLS JUG SPOON SPOONS "
         "LUNCH BOX TIN TINS BOTTLE GLASS BEAKER TRAY APRON OVEN GLOVE TOWEL TEATOWEL TEATOWELS BAKING CUTLERY "
         "JAR JARS COASTER COASTERS CHOPSTICKS PANTRY KITCHEN BREAD BISCUIT"),
        ("stationery & cards", "CARD CARDS NOTEBOOK PENCIL PENCILS PEN PENS PAPER WRAP NOTEPAD DIARY STICKER STICKERS "
         "ENVELOPE ENVELOPES BOOK CALENDAR ERASER RUBBER TAPE STATIONERY TAG TAGS LABEL"),
        ("toys & games", "TOY TOYS GAME GAMES DOLL DOLLS PUZZLE JIGSAW SKIPPING SPACEBOY DOMINOES SOLDIER TEDDY "
         "BEAR KIT PLAYHOUSE RATTLE SPINNING TOP"),
        ("garden & outdoor", "GARDEN PLANT PLANTER POT WATERING BIRD FEEDER BIRDHOUSE FLOWER FLOWERS HERB SEED "
         "PICNIC PARASOL UMBRELLA"),
        ("jewellery & accessories", "NECKLACE BRACELET EARRINGS RING BROOCH HAIR CLIP SLIDE SCARF HAT BEADS "
         "JEWELLERY KEYRING CHARM GLOVES MIRROR COMPACT"),
        ("bath & beauty", "BATH SOAP SPONGE TOILET BATHROOM TOOTHBRUSH WASHBAG MAKEUP COSMETIC"),
        ("storage", "STORAGE BASKET BASKETS BOX BOXES CRATE HOOK HOOKS HANGER HANGERS SHELF DRAWER CABINET "
         "RACK HOLDER CASE TIDY"),
        ("home decor", "SIGN FRAME FRAMES CUSHION CUSHIONS CLOCK ORNAMENT DECORATION HEART HANGING VASE DOORSTOP "
         "DOORMAT MAT WREATH CHIME CHIMES BLANKET THROW QUILT CURTAIN PICTURE PLAQUE BUNNIES WALL"),
    )
)

_FILLER = frozenset(
    "OF AND THE WITH IN ON FOR A AN SET SETS PACK PCS LARGE SMALL MINI JUMBO MEDIUM BIG TINY ASSORTED "
    "RED BLUE GREEN PINK WHITE BLACK IVORY CREAM GOLD SILVER YELLOW PURPLE ORANGE BROWN GREY GRAY "
    "VINTAGE RETRO DESIGN COLOUR COLOURS COL DESIGNS".split()
)
_WORD = re.compile(r"[A-Z][A-Z'\-]*")


def categorize(description: str) -> list[str]:
    """`[top_level, top_level/head_noun]` for a product description; `["other", "other/<head>"]` when unknown."""
    words = _WORD.findall(description.upper())
    top = next((name for name, keys in TAXONOMY if any(w in keys for w in words)), "other")
    head = next((w.lower() for w in reversed(words) if w not in _FILLER and len(w) > 1), "")
    return [top, f"{top}/{head}"] if head else [top]
