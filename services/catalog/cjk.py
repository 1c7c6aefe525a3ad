"""Chinese (and Japanese kana) text for FTS5: overlapping character bigrams.

FTS5's ``unicode61`` tokenizer splits only at spaces and punctuation, so ``数据交易所`` is one
token and a search for ``交易`` finds nothing; its ``trigram`` tokenizer cannot match a query of
two characters, which is the usual length of a Chinese word. A dictionary segmenter (jieba)
would miss every word its dictionary cuts differently (``交易`` inside ``交易所``), needs its
dictionary loaded in every process, and still needs a rule for words it does not know.

So the catalog indexes, beside each text column, a copy of its Chinese words as overlapping
bigrams (Lucene's CJK bigram analyzer does the same), with no dictionary: every character
starts one token, the next character included when there is one, so the run ``数据交易`` is
indexed as ``数据 据交 交易 易``. A query word becomes the phrase of its bigrams, which matches
exactly where the text holds that run of characters (``交易`` -> ``"交易"``, ``数据交易`` ->
``"数据 据交 交易"``); one character matches as a prefix (``数`` -> ``"数"*``). Latin letters
and digits glued to Chinese (``AI数据``, ``5G基站``) are split off as their own tokens, so
``5G`` finds them too. Words without any CJK character are left out of the copy: English text
is indexed, matched and ranked exactly as before.

Why bigrams rather than single characters: see docs/catalog.md ("Chinese text"); bigram
phrases were faster for longer words and do not match across punctuation (``信贷，风险`` is
not ``信贷风险``).
"""

from __future__ import annotations

import re

# Han (basic, extension A, compatibility, extensions B-H), the iteration marks, and kana.
_CJK_CHARS = "\u3005\u3007\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
_CJK = re.compile(f"[{_CJK_CHARS}]")
_RUNS = re.compile(f"[{_CJK_CHARS}]+|[^{_CJK_CHARS}]+")
_WORD = re.compile(r"\w+", re.UNICODE)


def has_cjk(text: str) -> bool:
    return _CJK.search(text) is not None


def _bigrams(run: str, *, complete: bool) -> list[str]:
    """``complete``: the index form (every character starts a token, the last one alone)."""
    grams = [run[i:i + 2] for i in range(len(run) - 1)]
    return [*grams, run[-1]] if complete or not grams else grams


def index_text(text: str) -> str:
    """The bigram copy of ``text``'s words that hold a CJK character ('' when there are none)."""
    if not has_cjk(text):
        return ""
    tokens: list[str] = []
    for word in _WORD.findall(text):
        if not has_cjk(word):
            continue
        for run in _RUNS.findall(word):
            tokens.extend(_bigrams(run, complete=True) if has_cjk(run) else [run])
    return " ".join(tokens)


def query_phrase(word: str) -> str:
    """One query word holding CJK -> a quoted FTS5 phrase (maybe a prefix) over the bigram copy.

    The word must be one ``\\w+`` match (no quotes, spaces or operators), so the result is safe.
    """
    runs = _RUNS.findall(word)
    tokens: list[str] = []
    prefix = False
    for i, run in enumerate(runs):
        if not has_cjk(run):
            tokens.append(run)
            continue
        last = i == len(runs) - 1
        # A run followed by Latin must end where the text's run ends: its full index form.
        tokens.extend(_bigrams(run, complete=not last))
        prefix = last and len(run) == 1
    return '"' + " ".join(tokens) + '"' + ("*" if prefix else "")


def occurrences(word: str, text: str) -> list[tuple[int, int]]:
    """Where ``word`` (a query word holding CJK) stands in ``text``, ignoring case, for highlights."""
    return [m.span() for m in re.finditer(re.escape(word), text, re.IGNORECASE)]
