"""Generated container names in podman's (docker's) adjective_surname shape."""

import os

_ADJECTIVES = (
    "admiring", "adoring", "affectionate", "amazing", "awesome", "beautiful", "blissful", "bold",
    "brave", "busy", "charming", "clever", "compassionate", "competent", "confident", "cool",
    "dazzling", "determined", "dreamy", "eager", "ecstatic", "elastic", "elegant", "eloquent",
    "epic", "exciting", "fervent", "festive", "flamboyant", "focused", "friendly", "gallant",
    "gifted", "goofy", "gracious", "happy", "hopeful", "hungry", "inspiring", "intelligent",
    "jolly", "jovial", "keen", "kind", "laughing", "loving", "lucid", "magical", "modest",
    "musing", "mystifying", "nice", "nifty", "nostalgic", "optimistic", "peaceful", "practical",
    "priceless", "quirky", "quizzical", "relaxed", "reverent", "romantic", "serene", "sharp",
    "silly", "sleepy", "stoic", "strange", "sweet", "tender", "thirsty", "trusting", "upbeat",
    "vibrant", "vigilant", "wizardly", "wonderful", "youthful", "zealous", "zen",
)

_SURNAMES = (
    "agnesi", "albattani", "allen", "archimedes", "babbage", "banach", "bardeen", "bell",
    "bhabha", "blackwell", "bohr", "booth", "bose", "brahmagupta", "cannon", "carson", "cerf",
    "chandrasekhar", "clarke", "curie", "darwin", "dijkstra", "einstein", "elion", "euclid",
    "euler", "fermat", "fermi", "feynman", "franklin", "galileo", "gauss", "goldberg",
    "goodall", "hamilton", "hawking", "heisenberg", "hermann", "hodgkin", "hopper", "hypatia",
    "johnson", "kalam", "keller", "kepler", "knuth", "kowalevski", "lamarr", "lamport",
    "leakey", "lovelace", "lumiere", "margulis", "mayer", "mccarthy", "mcclintock", "meitner",
    "mendel", "morse", "napier", "newton", "noether", "pascal", "pasteur", "payne", "perlman",
    "pike", "poincare", "ramanujan", "ritchie", "shannon", "shockley", "sinoussi", "stallman",
    "swartz", "tesla", "thompson", "torvalds", "turing", "wescoff", "wilson", "wozniak", "wright",
)


def generate() -> str:
    """A random adjective_surname (docker never makes "boring_wozniak"; neither does keel)."""
    while True:
        a, b = os.urandom(2)   # (os.urandom, not secrets: that import costs 4 ms per `keel run`)
        name = f"{_ADJECTIVES[a % len(_ADJECTIVES)]}_{_SURNAMES[b % len(_SURNAMES)]}"
        if name != "boring_wozniak":
            return name
