"""ControlNet's scales and step rule, against the original's formulas (the hints: test_preprocessors.py)."""

from pathlib import Path

import pytest

from sd_cli.control.units import active, control_scales, hint_path
from sd_cli.errors import UsageError


def test_scales_are_the_strength_or_guess_modes_decay():
    assert control_scales(0.5, False, 13) == [0.5] * 13
    guess = control_scales(2.0, True, 13)
    assert guess[-1] == 2.0  # the middle block's: 0.825 ** 0
    assert guess[0] == pytest.approx(2.0 * 0.825 ** 12)
    assert guess[6] == pytest.approx(2.0 * 0.825 ** 6)
    # fewer residuals (the tiny test ControlNet's 5): the first entries, as the original's zip takes them
    assert control_scales(1.0, True, 5) == pytest.approx([0.825 ** 12, 0.825 ** 11, 0.825 ** 10, 0.825 ** 9, 0.825 ** 8])
    with pytest.raises(UsageError, match="guess mode scales 13 residuals and this ControlNet makes 14"):
        control_scales(1.0, True, 14)


def test_a_unit_steers_the_steps_between_start_and_end():
    steered = [i for i in range(10) if active(i / 10, 0.2, 0.5)]
    assert steered == [2, 3, 4, 5]  # AUTOMATIC1111's extension: start <= i / steps <= end
    assert [i for i in range(4) if active(i / 4, 0.0, 1.0)] == [0, 1, 2, 3]


def test_hint_paths_for_several_units():
    assert hint_path(Path("out/hint.png"), 0) == Path("out/hint.png")
    assert hint_path(Path("out/hint.png"), 2) == Path("out/hint-2.png")
