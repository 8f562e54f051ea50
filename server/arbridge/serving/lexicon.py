"""Common object nouns, written for ArBridge: what a caption may name.

Used twice: the caption scorer (`arbridge eval`) calls a named noun that is not in
the scene a hallucination, and scene-constrained decoding keeps the model from
writing the nouns a scene does not hold. Each entry is a noun as a detector
would label it, with the other words that name the same thing (synonyms count
as mentions of the object, never as hallucinations). Room parts (wall, floor,
ceiling, sky, ground) and words that are also materials or verbs ("glass",
"light", "wood", "watch" as a verb...) are left out: naming them is not a claim
that an object is there.
"""

from __future__ import annotations

import re

# noun -> synonyms (same object). Singular, lower case.
NOUNS: dict[str, tuple[str, ...]] = {
    # furniture
    "chair": ("seat",), "armchair": (), "stool": (), "bench": (), "sofa": ("couch",),
    "table": (), "desk": (), "bed": (), "dresser": (), "wardrobe": ("closet",),
    "cabinet": ("cupboard",), "shelf": ("shelves",), "bookshelf": ("bookcase",),
    "drawer": (), "nightstand": (), "ottoman": (), "crib": (), "hammock": (),
    "rug": ("carpet",), "mat": (), "curtain": ("drapes",), "blind": (), "cushion": (),
    "pillow": (), "blanket": (), "mattress": (), "mirror": (), "painting": ("picture",),
    "poster": (), "frame": (), "clock": (), "vase": (), "candle": (), "lamp": (),
    "chandelier": (), "fan": (), "radiator": (), "fireplace": (), "door": (),
    "window": (), "stairs": ("staircase", "steps"), "railing": (), "column": ("pillar",),
    # kitchen
    "fridge": ("refrigerator",), "oven": (), "stove": ("cooker",), "microwave": (),
    "toaster": (), "kettle": (), "sink": (), "dishwasher": (), "blender": (),
    "mug": (), "cup": (), "bottle": (), "jar": (), "bowl": (), "plate": (),
    "dish": (), "pan": (), "pot": (), "teapot": (), "spoon": (), "fork": (), "knife": (),
    "chopsticks": (), "napkin": (), "tray": (), "cutting board": (), "apron": (),
    "coffee machine": ("coffee maker",), "trash can": ("bin", "dustbin", "wastebasket"),
    # food
    "apple": (), "banana": (), "orange": (), "lemon": (), "grapes": (), "bread": (),
    "sandwich": (), "pizza": (), "cake": (), "cookie": (), "egg": (), "cheese": (),
    "tomato": (), "carrot": (), "potato": (), "onion": (), "broccoli": (), "salad": (),
    "donut": ("doughnut",), "burger": ("hamburger",), "pie": (), "watermelon": (),
    # electronics
    "television": ("tv",), "monitor": ("screen",), "laptop": ("notebook computer",),
    "computer": ("pc",), "keyboard": (), "mouse": (), "phone": ("smartphone",),
    "tablet": (), "printer": (), "speaker": (), "headphones": ("headset",),
    "camera": (), "remote": ("remote control",), "charger": (), "cable": (),
    "router": (), "projector": (), "console": (), "controller": (), "microphone": (),
    "radio": (), "calculator": (), "tripod": (), "drone": (),
    # office and school
    "book": (), "notebook": (), "pen": (), "pencil": (), "marker": (), "eraser": (),
    "scissors": (), "stapler": (), "folder": (), "envelope": (), "paper": (),
    "whiteboard": (), "blackboard": ("chalkboard",), "calendar": (), "map": (),
    "globe": (), "ruler": (), "backpack": ("rucksack",), "briefcase": (), "bag": (),
    "handbag": ("purse",), "suitcase": ("luggage",), "box": (), "basket": (),
    "file cabinet": ("filing cabinet",), "magazine": (), "newspaper": (), "letter": (),
    # bathroom
    "toilet": (), "bathtub": ("tub",), "shower": (), "towel": (), "toothbrush": (),
    "toothpaste": (), "soap": (), "shampoo": (), "razor": (), "comb": (),
    "hairdryer": ("hair dryer",), "scale": (), "faucet": ("tap",),
    # clothing and personal
    "shirt": (), "jacket": ("coat",), "dress": (), "skirt": (), "trousers": ("pants",),
    "jeans": (), "shoe": (), "boot": (), "sneaker": ("trainer",), "sandal": (),
    "hat": ("cap",), "scarf": (), "glove": (), "sock": (), "belt": (),
    "umbrella": (), "wallet": (), "key": (), "glasses": ("spectacles",),
    "sunglasses": (), "wristwatch": (), "ring": (), "necklace": (),
    "bracelet": (), "earring": (),
    # tools and household
    "hammer": (), "screwdriver": (), "wrench": (), "drill": (),
    "ladder": (), "bucket": (), "broom": (), "mop": (), "vacuum": ("vacuum cleaner",),
    "hanger": (), "hose": (), "shovel": (), "rake": (), "toolbox": (),
    "flashlight": ("torch",), "tape": (), "rope": (), "battery": (), "extinguisher":
    ("fire extinguisher",), "plant": ("houseplant",), "flower": (),
    # toys, sports, music
    "ball": (), "football": ("soccer ball",), "basketball": (), "racket": (),
    "skateboard": (), "surfboard": (), "skis": (), "snowboard": (), "helmet": (),
    "kite": (), "doll": (), "teddy bear": (), "puzzle": (), "dice": (),
    "guitar": (), "piano": ("keyboard piano",), "violin": (), "drum": (),
    "trumpet": (), "bicycle": ("bike",), "scooter": (), "treadmill": (),
    "dumbbell": (), "yoga mat": (),
    # outdoors and street
    "car": (), "truck": (), "bus": (), "van": (), "motorcycle": ("motorbike",),
    "train": (), "tram": (), "boat": (), "airplane": ("plane", "aeroplane"),
    "taxi": ("cab",), "tree": (), "bush": ("shrub",), "fence": (), "gate": (),
    "mailbox": ("letterbox",), "streetlight": ("street lamp",),
    "traffic light": ("traffic signal",), "sign": ("signpost",), "stop sign": (),
    "hydrant": ("fire hydrant",), "parking meter": (), "fountain": (), "statue": (),
    "sculpture": (), "bridge": (), "tent": (), "umbrella stand": (), "swing": (),
    "slide": (), "playground": (), "barbecue": ("grill",), "picnic table": (),
    "wheelbarrow": (), "lawnmower": (), "cone": ("traffic cone",), "pole": (),
    "billboard": (), "kiosk": (), "stall": (), "booth": (), "car park": (),
    "crosswalk": ("zebra crossing",), "bus stop": (), "escalator": (),
    "elevator": (), "turnstile": (), "vending machine": (), "atm": (),
    "rock": ("stone", "boulder"), "log": (), "pond": (), "river": (), "lake": (),
    "mountain": (), "hill": (), "beach": (), "cloud": (), "sun": (),
    "moon": (), "building": (), "house": (), "tower": (), "shop": (),
    "restaurant": (), "cafe": ("café",), "church": (), "skyscraper": (),
    # animals
    "dog": ("puppy",), "cat": ("kitten",), "bird": (), "horse": (), "cow": (),
    "sheep": (), "pig": (), "chicken": (), "duck": (), "goose": (), "fish": (),
    "rabbit": ("bunny",), "squirrel": (), "butterfly": (),
    "bee": (), "spider": (), "elephant": (), "giraffe": (), "zebra": (), "lion": (),
    "bear": (), "monkey": (), "deer": (), "whale": (), "shark": (), "dolphin": (),
    "crab": (), "seagull": (), "turtle": (), "frog": (), "snake": (), "owl": (),
    # people
    "person": ("man", "woman", "people", "child", "kid", "boy", "girl"),
    # misc
    "trophy": (), "medal": (), "flag": (), "banner": (), "balloon": (), "gift": (),
    "candy": (), "coin": (), "ticket": (), "card": (), "photo": ("photograph",),
    "sticker": (), "toy": (), "game": (), "board game": (),
    "aquarium": ("fish tank",), "cage": (), "birdhouse": (), "lantern": (),
    "thermostat": (), "socket": ("outlet",), "switch": ("light switch",),
    "alarm": (), "smoke detector": (), "doorbell": (), "doormat": (), "coat rack": (),
    "shoe rack": (), "laundry basket": (), "washing machine": ("washer",),
    "dryer": (), "ironing board": (), "sewing machine": (), "typewriter": (),
}

_IRREGULAR = {"person": "people", "knife": "knives", "shelf": "shelves", "mouse": "mice",
              "sheep": "sheep", "fish": "fish", "deer": "deer", "goose": "geese",
              "man": "men", "woman": "women", "child": "children", "scissors": "scissors",
              "glasses": "glasses", "dice": "dice", "jeans": "jeans", "stairs": "stairs",
              "trousers": "trousers", "headphones": "headphones", "chopsticks": "chopsticks",
              "grapes": "grapes", "skis": "skis", "sunglasses": "sunglasses"}


IRREGULAR_PLURALS = frozenset(_IRREGULAR.values())


def plural(word: str) -> str:
    head, _, last = word.rpartition(" ")
    if last.lower() in _IRREGULAR:  # "Person" -> "People"
        out = _IRREGULAR[last.lower()]
        out = out.capitalize() if last[:1].isupper() else out
    elif re.search(r"(shelf|leaf|loaf|half|wolf|calf|knife|wife|life)$", last, re.I):
        out = re.sub(r"fe?$", "ves", last)  # "bookshelves", "pocket knives"
    elif re.search(r"(s|x|z|ch|sh)$", last):
        out = last + "es"
    elif re.search(r"[^aeiou]y$", last):
        out = last[:-1] + "ies"
    else:
        out = last + "s"
    return f"{head} {out}" if head else out


def forms(word: str) -> set[str]:
    """The written forms of a noun: itself and its plural, lower case."""
    word = word.lower().strip()
    return {word, plural(word)}


def names_of(label: str) -> set[str]:
    """Every word form that names an object with this label: the label, its
    synonyms, and (for a multi-word label such as "coffee table") its head noun."""
    label = label.lower().strip()
    names = forms(label)
    entry = NOUNS.get(label)
    if entry is None and " " in label:  # "coffee table" -> "table"
        head = label.rsplit(" ", 1)[1]
        names |= forms(head)
        entry = NOUNS.get(head)
    for synonym in entry or ():
        names |= forms(synonym)
    return names


def all_object_words() -> set[str]:
    """Every noun form in the lexicon (entries, plurals, synonyms)."""
    out: set[str] = set()
    for noun, synonyms in NOUNS.items():
        out |= forms(noun)
        for synonym in synonyms:
            out |= forms(synonym)
    return out
