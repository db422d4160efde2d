"""Controlled sentiment generation in miniature (the DPO paper's IMDb task): a procedural corpus of
short movie reviews with mixed sentiment, review-opening prompts, and the VADER compound score of
the completion as the ground-truth reward (PyPI ``nltk-vader-sentiment``, lexicon bundled).

Everything is deterministic from a seed. Each review draws a latent sentiment p ∈ [0, 1]; each of its
2–4 sentences is positive with probability p, built from one of several sentence shapes over word
lists, so a small LM must learn real structure (agreement of clause shapes, punctuation, which
words go with which) rather than one template.
"""
from __future__ import annotations

import random
from functools import lru_cache

SUBJECTS = ["the film", "the movie", "this film", "this movie", "the plot", "the story", "the acting", "the cast",
            "the script", "the ending", "the soundtrack", "the music", "the dialogue", "the director",
            "the camera work", "the pacing", "the lead actor", "the lead actress", "the villain", "the sequel",
            "the first half",
            "the final act", "the humor", "the special effects", "the screenplay", "the characters"]
POSITIVE = ["great", "wonderful", "brilliant", "beautiful", "excellent", "moving", "funny", "clever", "charming",
            "delightful", "superb", "gripping", "fantastic", "lovely", "touching", "fresh", "powerful", "amazing",
            "enjoyable", "stunning", "smart", "warm", "perfect", "good", "fun"]
NEGATIVE = ["terrible", "awful", "boring", "dull", "bad", "weak", "stupid", "painful", "horrible", "ugly", "messy",
            "lazy", "silly", "tedious", "dreadful", "flat", "poor", "annoying", "pointless", "disappointing",
            "bland", "clumsy", "miserable", "worst", "sad"]
ADVERBS = ["", "", "very ", "really ", "quite ", "truly ", "incredibly ", "rather ", "so ", "extremely ", "pretty "]
NOUNS = ["film", "movie", "story", "drama", "comedy", "thriller", "romance", "mystery", "adventure", "western"]
POS_VERBS = ["loved", "enjoyed", "liked", "adored", "admired", "appreciated"]
NEG_VERBS = ["hated", "disliked", "regretted", "could not stand", "was bored by", "was annoyed by"]
POS_CLOSERS = ["I would watch it again.", "Highly recommended.", "A real treat.", "Well worth your time.",
               "It made my day.", "Do not miss it.", "Ten out of ten.", "What a joy."]
NEG_CLOSERS = ["I want my money back.", "Avoid it.", "A waste of time.", "Not worth watching.", "Skip this one.",
               "I fell asleep.", "What a mess.", "Never again."]
NEUTRAL = ["I watched it last night.", "It runs about two hours.", "I saw it with my brother.",
           "It is based on a novel.", "The theater was half full.", "It came out last year.",
           "I went in knowing nothing."]


def _sentence(rng: random.Random, positive: bool) -> str:
    adj = rng.choice(POSITIVE if positive else NEGATIVE)
    adv = rng.choice(ADVERBS)
    shape = rng.randrange(7)
    if shape == 0:
        return f"{rng.choice(SUBJECTS).capitalize()} was {adv}{adj}."
    if shape == 1:
        return f"I {rng.choice(POS_VERBS if positive else NEG_VERBS)} {rng.choice(SUBJECTS)}."
    if shape == 2:
        other = rng.choice(POSITIVE if rng.random() < 0.5 else NEGATIVE)
        return f"{rng.choice(SUBJECTS).capitalize()} was {adj}, but {rng.choice(SUBJECTS)} was {other}."
    if shape == 3:
        article = "an" if adj[0] in "aeiou" else "a"
        return (f"It is {article} {adj} {rng.choice(NOUNS)} with {adv}{rng.choice(POSITIVE if positive else NEGATIVE)} "
                f"{rng.choice(['acting', 'music', 'writing', 'moments', 'scenes'])}.")
    if shape == 4:
        return rng.choice(POS_CLOSERS if positive else NEG_CLOSERS)
    if shape == 5:
        return (f"{rng.choice(SUBJECTS).capitalize()} felt {adv}{adj} and "
                f"{rng.choice(POSITIVE if positive else NEGATIVE)}.")
    return rng.choice(NEUTRAL)


TITLE_A = ["Silent", "Broken", "Last", "Golden", "Hidden", "Red", "Lonely", "Long", "Dark", "Little", "Secret",
           "Wild", "Frozen", "Distant", "Burning", "Quiet"]
TITLE_B = ["River", "Summer", "Road", "Garden", "House", "Promise", "Winter", "City", "Island", "Letter", "Song",
           "Harbor", "Mountain", "Station", "Kingdom", "Night"]
TOPICS = ["a lost dog", "two brothers", "a small town", "a failing band", "a young doctor", "an old sailor",
          "a stolen painting", "a family farm", "a school teacher", "a road trip", "a haunted hotel", "a chess player",
          "a space station", "a boxing coach", "a missing girl", "a wedding"]
WHEN = ["last night", "on a whim", "with my brother", "at a festival", "on a plane", "twice", "this weekend",
        "with friends", "at home", "in an empty theater"]
FIRST = ["I watched {title} {when}.", "{title} is a {noun} about {topic}.", "We saw {title} {when}.",
         "My friend picked {title} for movie night.", "{title} tells the story of {topic}.",
         "I went to see {title} {when}.", "After all the hype I finally saw {title}.",
         "The new {noun} from the director of {title} is about {topic}.", "{title} follows {topic}.",
         "As a fan of the book, I saw {title} {when}."]


def review(rng: random.Random) -> str:
    p = rng.betavariate(0.7, 0.7)
    title = f"The {rng.choice(TITLE_A)} {rng.choice(TITLE_B)}"
    first = rng.choice(FIRST).format(title=title, when=rng.choice(WHEN), noun=rng.choice(NOUNS),
                                     topic=rng.choice(TOPICS))
    sentences = [first[0].upper() + first[1:]] + [_sentence(rng, rng.random() < p) for _ in range(rng.randint(2, 4))]
    return " ".join(sentences)


def corpus(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [review(rng) for _ in range(n)]


def prompts(n: int, seed: int = 1) -> list[str]:
    """Review openings: the first 4–6 words of fresh reviews (neutral starts)."""
    rng = random.Random(seed + 7)
    return [" ".join(r.split()[:rng.randint(4, 6)]) for r in corpus(n, seed)]


@lru_cache(maxsize=1)
def _analyzer():
    from vader import SentimentIntensityAnalyzer
    return SentimentIntensityAnalyzer()


def vader_reward(prompts: list[str], completions: list[str]) -> list[float]:
    """Ground truth: VADER compound sentiment of the completion alone, in [−1, 1]."""
    analyzer = _analyzer()
    return [analyzer.polarity_scores(c)["compound"] for c in completions]
