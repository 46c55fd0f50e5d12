"""A small lexicon of length cues: words and word pairs that say how long an answer is asked to be.

Why: with a few hundred distinct training prompts, hashed n-grams only know the words they saw. These cues carry
prior knowledge that transfers to unseen prompts (an "essay" is long, "one word" is short, a yes/no question is
short). Lookup is by dictionary on words already split by ``features``, so it costs nothing extra per request.
"""

from __future__ import annotations

from collections.abc import Sequence

_WORDS: dict[str, tuple[str, ...]] = {
    "long_form": ("essay", "story", "article", "blog", "speech", "report", "narrative", "script", "chapter",
                  "screenplay", "novel", "dialogue", "conversation"),
    "compose": ("write", "compose", "draft", "create", "generate", "design", "develop", "plan", "build"),
    "letter": ("letter", "email", "message", "invitation", "proposal", "announcement"),
    "poem": ("poem", "poetry", "haiku", "song", "lyrics", "limerick", "rap", "sonnet", "verse"),
    "explain": ("explain", "describe", "discuss", "elaborate", "analyze", "analyse", "why", "how"),
    "enumerate": ("list", "steps", "tips", "ideas", "ways", "examples", "suggest", "suggestions", "recommend",
                  "recommendations", "options", "pros", "cons", "advantages", "disadvantages", "itinerary",
                  "outline", "recipe", "strategies", "reasons", "benefits"),
    "compare": ("compare", "comparison", "difference", "differences", "versus", "vs", "contrast"),
    "detail": ("detailed", "detail", "comprehensive", "thorough", "thoroughly", "guide", "tutorial"),
    "code": ("code", "python", "javascript", "function", "program", "sql", "java", "html", "css", "regex",
             "implement", "algorithm", "bash", "class", "api", "typescript", "rust", "golang"),
    "short": ("brief", "briefly", "short", "concise", "concisely", "summarize", "summarise", "summary", "tldr",
              "quick", "quickly", "simply"),
    "classify": ("classify", "categorize", "categorise", "identify", "determine", "label", "correct", "fix",
                 "grammar", "spelling", "translate", "rewrite", "paraphrase", "rephrase", "convert", "extract"),
    "number": ("calculate", "compute", "solve", "math", "equation", "sum", "average", "percent", "percentage"),
    "name": ("name", "title", "slogan", "tagline", "hashtag", "tweet", "caption", "headline", "word"),
    "opinion": ("opinion", "think", "feel", "believe", "favorite", "favourite", "best", "worst"),
    "roleplay": ("pretend", "act", "imagine", "roleplay", "persona"),
}
_PAIRS: dict[str, tuple[str, ...]] = {
    "short": ("one word", "one sentence", "single word", "a sentence", "few words", "yes or", "or no",
              "true or", "or false"),
    "detail": ("in detail", "step by", "by step"),
    "roleplay": ("you are", "act as", "role play"),
    "explain": ("what are", "how to", "how does", "how do", "how can"),
}
_FIRST: tuple[str, ...] = ("who", "when", "where", "which", "what", "is", "are", "was", "were", "does", "do", "did",
                           "can", "could", "should", "will", "would")
_NUMBERS = frozenset(("2", "3", "4", "5", "6", "7", "8", "9", "10", "two", "three", "four", "five", "six", "seven",
                      "eight", "nine", "ten", "twenty"))
_UNITS = frozenset(("words", "sentences", "paragraphs", "items", "examples", "ideas", "ways", "tips", "reasons",
                    "steps", "points", "questions", "names", "lines", "bullet", "bullets"))

CUE_NAMES: tuple[str, ...] = (*_WORDS, "factoid", "counted")
_INDEX = {name: i for i, name in enumerate(CUE_NAMES)}
_WORD_CUES: dict[str, list[int]] = {}
for _cue, _words in _WORDS.items():
    for _w in _words:
        _WORD_CUES.setdefault(_w, []).append(_INDEX[_cue])
_PAIR_CUES: dict[str, int] = {p: _INDEX[c] for c, pairs in _PAIRS.items() for p in pairs}
_FIRST_SET = frozenset(_FIRST)


def cue_vector(words: Sequence[str]) -> list[float]:
    """0/1 per cue of ``CUE_NAMES`` for lower-cased ``words`` (punctuation tokens may be among them)."""
    out = [0.0] * len(CUE_NAMES)
    prev = ""
    for i, word in enumerate(words):
        for idx in _WORD_CUES.get(word, ()):
            out[idx] = 1.0
        pair = _PAIR_CUES.get(prev + " " + word)
        if pair is not None:
            out[pair] = 1.0
        if prev in _NUMBERS and word in _UNITS or (i >= 2 and words[i - 2] in _NUMBERS and word in _UNITS):
            out[_INDEX["counted"]] = 1.0
        prev = word
    if words and words[0] in _FIRST_SET:
        out[_INDEX["factoid"]] = 1.0
    return out
