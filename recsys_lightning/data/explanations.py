"""Explanation targets without Sentires: a review sentence that mentions a frequent item feature word, with that
word as the hint (the (feature, sentence) pairs PETER and P5 take from Sentires' phrase-level sentiment tool).

The extraction, step by step (all deterministic):
1. Sentences: review text split after `.`, `!` or `?`; a sentence qualifies with `min_words`..`max_words` words.
2. Words: lower-cased alphabetic tokens of at least three letters that are not in `STOPWORDS` (function words
   and the generic opinion words of reviews: great, good, love, ...).
3. Feature words: words that occur in the reviews of at least `min_items` distinct items and are noun-like:
   at least `noun_share` of their occurrences close a determiner phrase, i.e. follow a determiner or
   possessive and precede punctuation, the end or a stopword ("the sound is", "these strings.", "my tuner
   and"). Without a part-of-speech tagger this keeps aspects and drops verbs and adjectives ("a cheap cable").
4. Each review's explanation is its first qualifying sentence that contains a feature word; the hint is its
   most noun-like feature word (highest share of phrase-final uses; first one on ties). Reviews without such a
   sentence have no explanation (None).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np

from recsys_lightning.data.schema import RecData

SENTENCE = re.compile(r"(?<=[.!?])\s+")
WORD = re.compile(r"[A-Za-z]+")
TOKEN = re.compile(r"[A-Za-z]+|[^\sA-Za-z]")
DETERMINERS = frozenset("the this that these those my your his her its our their a an".split())
STOPWORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before being below between
both but by can could did do does doing down during each few for from further had has have having he her here
hers herself him himself his how i if in into is it its itself just me more most my myself no nor not now of off
on once only or other our ours out over own same she should so some such than that the their theirs them then
there these they this those through to too under until up very was we were what when where which while who whom
why will with would you your yours yourself yet get got one two three lot lots thing things way much many well
really still even ever never always since though although however every another something anything nothing
great good nice best better excellent love loved like liked awesome perfect fine bad worse worst happy pleased
recommend recommended highly definitely pretty quite little bit first last new old use used using works work
worked working make makes made buy bought purchase purchased product products item items review star stars
time times day days year years back sure need needs needed want wanted think know see say said going go
came come comes others must long couple kind stuff idea reviews son daughter wife husband friend friends
""".split())


@dataclass(frozen=True)
class Explanation:
    """One review's explanation sentence and the feature word it mentions (the hint)."""

    sentence: str
    feature: str


def _words(text: str) -> list[str]:
    return [w.lower() for w in WORD.findall(text)]


def feature_words(data: RecData, min_items: int = 5, noun_share: float = 0.2,
                  counted: np.ndarray | None = None) -> dict[str, float]:
    """Frequent, noun-like review words with their noun share: the item feature vocabulary (steps 2 and 3),
    counted over the interactions `counted` marks (the training split, so no held-out review shapes it), or all."""
    items: dict[str, set[int]] = defaultdict(set)
    phrase_final: Counter[str] = Counter()
    total: Counter[str] = Counter()
    rows = range(len(data.review)) if counted is None else np.flatnonzero(counted)
    for item, text in ((int(data.item[r]), data.review[r]) for r in rows):
        tokens = [t.lower() for t in TOKEN.findall(text)]
        for prev, word, nxt in zip(["", *tokens], tokens, [*tokens[1:], "."]):
            if len(word) < 3 or word in STOPWORDS or not word.isalpha():
                continue
            items[word].add(item)
            total[word] += 1
            phrase_final[word] += prev in DETERMINERS and (not nxt.isalpha() or nxt in STOPWORDS)
    shares = {w: phrase_final[w] / total[w] for w, found in items.items() if len(found) >= min_items}
    return {w: share for w, share in shares.items() if share >= noun_share}


def explain(text: str, features: dict[str, float], min_words: int = 4, max_words: int = 30) -> Explanation | None:
    """The first sentence of `text` with `min_words`..`max_words` words that mentions a feature word."""
    for sentence in SENTENCE.split(text.strip()):
        if not min_words <= len(sentence.split()) <= max_words:
            continue
        hits = [w for w in _words(sentence) if w in features]
        if hits:
            return Explanation(sentence.strip(), max(hits, key=lambda w: features[w]))
    return None


def extract_explanations(data: RecData, counted: np.ndarray | None = None, min_items: int = 5,
                         noun_share: float = 0.2, min_words: int = 4, max_words: int = 30) -> list[Explanation | None]:
    """One explanation (or None) per interaction, in the order of `data`'s interaction columns; the feature words
    are counted over the interactions `counted` marks (the training split), or all."""
    features = feature_words(data, min_items, noun_share, counted)
    return [explain(text, features, min_words, max_words) for text in data.review]
