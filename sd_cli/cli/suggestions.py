""""Did you mean" for a mistyped flag: the closest options, each named once.

Every option has several spellings (`--steps`, `--ddim_steps`); a typo is compared with all of
them, case and `-`/`_` aside, and each option close enough is suggested under the spelling that
came closest. The flag is never taken for the suggestion: a typo stays an error.
"""

from difflib import SequenceMatcher

CLOSE_ENOUGH = 0.6  # difflib's own default cutoff for get_close_matches
MOST = 3


def unknown_option_message(typed: str, options: list[list[str]]) -> str:
    """The one-line error for `typed`, given each option's spellings."""
    close = suggestions(typed, options)
    hint = f"; did you mean {either(close)}?" if close else "; see --help for the options"
    return f"no such option {typed}{hint}"


def either(names: list[str]) -> str:
    """'a', 'a or b', 'a, b or c'."""
    return " or ".join(names) if len(names) < 3 else f"{', '.join(names[:-1])} or {names[-1]}"


def suggestions(typed: str, options: list[list[str]]) -> list[str]:
    """Up to three spellings, one per option, best first; one where only case, - or _ differ."""
    best: list[tuple[float, str]] = []
    for spellings in options:
        long_spellings = [s for s in spellings if s.startswith("--")]
        if not long_spellings:
            continue
        spelling = max(long_spellings, key=lambda s: _similarity(typed, s))  # the first (readable) on a tie
        score = _similarity(typed, spelling)
        if score >= CLOSE_ENOUGH:
            best.append((score, spelling))
    best.sort(key=lambda pair: -pair[0])
    if best and best[0][0] == 1.0:  # only case or - and _ differ: that one option
        return [best[0][1]]
    return [spelling for _score, spelling in best[:MOST]]


def _similarity(typed: str, spelling: str) -> float:
    return SequenceMatcher(None, _plain(typed), _plain(spelling)).ratio()


def _plain(flag: str) -> str:
    return flag.lstrip("-").replace("_", "-").lower()
