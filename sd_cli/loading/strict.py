"""The strict-load report every loader uses: which tensors are missing, unexpected or of another shape.

A loader compares the tensors it has with the ones the module expects before loading anything,
so a mismatch stops the run with the names instead of leaving random or unused weights.
"""

from dataclasses import dataclass

from sd_cli.errors import CheckpointError


@dataclass(frozen=True)
class StrictReport:
    missing: list[str]  # expected by the module, absent from the file
    unexpected: list[str]  # in the file, used by nothing
    wrong_shape: list[str]  # "key (file shape) vs (module shape)"

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.wrong_shape)

    def describe(self, sides: str = "file vs model", noun: str = "tensors", limit: int = 4) -> str:
        """'3 tensors differ in shape (sides): ...; 1 missing tensors: ...; 2 unexpected tensors: ...'.

        `noun` is left out ("") where the message already says what the names are.
        """
        def label(*words: str) -> str:
            return " ".join(word for word in words if word)

        parts = [(label(noun, "differ in shape", f"({sides})"), self.wrong_shape),
                 (label("missing", noun), self.missing), (label("unexpected", noun), self.unexpected)]
        return "; ".join(f"{len(names)} {what}: {_some(names, limit)}" for what, names in parts if names)

    def raise_if_any(self, header: str, sides: str = "file vs model", noun: str = "tensors", hint: str = "") -> None:
        """Raise CheckpointError("<header>: <describe()><hint>") when anything does not fit."""
        if self:
            raise CheckpointError(f"{header}: {self.describe(sides, noun)}{hint}")


def compare(expected: dict, given: dict, unused=()) -> StrictReport:
    """expected: the module's state dict; given: the tensors to load into it; unused: keys the
    caller set aside and uses for nothing, reported as unexpected."""
    shapes = {key: tuple(value.shape) for key, value in expected.items()}
    wrong = [f"{key} {tuple(given[key].shape)} vs {shapes[key]}" for key in sorted(set(shapes) & set(given))
             if tuple(given[key].shape) != shapes[key]]
    return StrictReport(missing=sorted(set(shapes) - set(given)),
                        unexpected=sorted(set(unused) | (set(given) - set(shapes))), wrong_shape=wrong)


def _some(names: list[str], limit: int) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
