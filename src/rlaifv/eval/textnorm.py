"""Word normalization shared by the CHAIR and AMBER scorers: lowercase word tokens and a noun singularizer.

The reference scorers use NLTK's Punkt/Treebank tokenizer with `pattern.en.singularize` (CHAIR) or WordNet's
lemmatizer (Object HalBench, AMBER). Their data files cannot be downloaded where this package must run (CI, offline
clusters), so this module needs no data at all: a regular expression for tokens and a rule-based singularizer that
knows the irregular plurals of the object vocabularies (COCO's 80 categories with their synonyms, AMBER's objects).
Only nouns matter to the scorers, so the rules aim at nouns; a verb or function word that is "singularized" wrongly
("was" -> "wa") cannot collide with an object name. `tests/test_chair.py` pins that every vocabulary word maps to
itself and its plural back to it. Differences from the references are listed in docs/evaluation.md.
"""

from __future__ import annotations

import functools
import re

# Letters and digits, with inner hyphens kept ("t-shirt", "e-book") and apostrophes split off ("dog's" -> "dog").
_TOKEN = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")

# Irregular plurals, and regular-looking ones the suffix rules below would get wrong.
IRREGULAR = {
    "people": "person", "persons": "person", "men": "man", "children": "child", "oxen": "ox", "feet": "foot",
    "teeth": "tooth", "geese": "goose", "mice": "mouse", "lice": "louse", "dice": "die", "cacti": "cactus",
    "fungi": "fungus",
    "knives": "knife", "wives": "wife", "lives": "life", "leaves": "leaf", "loaves": "loaf", "shelves": "shelf",
    "calves": "calf", "halves": "half", "wolves": "wolf", "scarves": "scarf", "thieves": "thief", "elves": "elf",
    "hooves": "hoof", "selves": "self", "sheaves": "sheaf", "skis": "ski", "taxis": "taxi", "kiwis": "kiwi",
    "bikinis": "bikini", "martinis": "martini", "zucchinis": "zucchini", "buses": "bus", "busses": "bus",
    "minibuses": "minibus", "airbuses": "airbus", "trolleybuses": "trolleybus", "octopuses": "octopus",
    "cactuses": "cactus", "campuses": "campus", "circuses": "circus", "viruses": "virus", "bonuses": "bonus",
    "walruses": "walrus", "lenses": "lens", "gases": "gas", "canvases": "canvas", "atlases": "atlas",
    "irises": "iris", "potatoes": "potato", "tomatoes": "tomato", "heroes": "hero", "mangoes": "mango",
    "echoes": "echo", "volcanoes": "volcano", "torpedoes": "torpedo", "buffaloes": "buffalo", "dominoes": "domino",
    "mosquitoes": "mosquito", "quizzes": "quiz", "headaches": "headache", "mustaches": "mustache",
    "moustaches": "moustache", "caches": "cache", "niches": "niche", "avalanches": "avalanche", "quiches": "quiche",
    "cliches": "cliche", "psyches": "psyche",
}
# Words that end in "s" but are singular (or have no singular the vocabularies use).
INVARIANT = frozenset({
    "bus", "gas", "lens", "canvas", "atlas", "news", "series", "species", "means", "scissors", "pants", "jeans",
    "shorts", "trousers", "tongs", "pliers", "goggles", "binoculars", "billiards", "chess", "tennis", "physics",
    "mathematics", "clothes", "sheep", "deer", "fish", "moose", "bison", "aircraft", "swiss", "christmas",
    "this", "his", "is", "was", "has", "as", "its", "us", "yes", "thus", "plus", "across", "perhaps", "always",
    "less", "unless", "besides", "towards", "afterwards", "various", "numerous", "previous", "famous",
})
# Singulars ending in "ie", whose plural "-ies" is not "-y" + "es".
_IE = frozenset({
    "cookie", "movie", "brownie", "pie", "tie", "lie", "hippie", "rookie", "smoothie", "selfie", "zombie", "calorie",
    "goalie", "collie", "auntie", "birdie", "doggie", "veggie", "beanie", "hoodie", "sweetie", "bootie", "kiddie",
    "magpie", "genie", "prairie", "eyrie", "lingerie", "necktie", "bowtie", "potpie", "yuppie", "barbie", "roomie",
})
# Words ending in "men" that are not plurals of "-man".
_MEN_SINGULAR = frozenset({"omen", "specimen", "stamen", "abdomen", "semen", "hymen", "amen", "regimen"})


@functools.lru_cache(maxsize=65536)
def singularize(word: str) -> str:
    """The singular of an English noun (lowercase in, lowercase out); other words come back unchanged or harmlessly
    cut. Cached: a corpus repeats few distinct words, so scoring 10,000 responses stays fast."""
    if word in IRREGULAR:
        return IRREGULAR[word]
    if len(word) <= 3 or word in INVARIANT:
        return word
    if word.endswith("men") and word not in _MEN_SINGULAR:
        return word[:-3] + "man"  # women, policemen, firemen
    if not word.endswith("s") or word.endswith(("ss", "us", "is", "ous")):
        return word  # grass, glass, octopus, tennis
    if word.endswith("ies"):
        if word[:-1] in _IE:
            return word[:-1]  # cookies, ties
        return word[:-3] + "y" if len(word) > 4 else word[:-1]  # puppies -> puppy; pies -> pie
    if word.endswith(("sses", "ches", "shes", "xes", "zzes")):
        return word[:-2]  # glasses, benches, dishes, boxes
    return word[:-1]  # dogs, horses, gloves, shoes, cakes


def tokens(text: str) -> list[str]:
    """Lowercase word tokens of a text, punctuation dropped."""
    return _TOKEN.findall(text.lower())


def normalized_tokens(text: str) -> list[str]:
    """Lowercase, tokenize, singularize: the words both scorers match against their vocabularies."""
    return [singularize(t) for t in _TOKEN.findall(text.lower())]


def normalize_phrase(phrase: str) -> str:
    """A vocabulary entry ("Sports balls", "teddy bear") in the same form as normalized response tokens."""
    return " ".join(normalized_tokens(phrase))
