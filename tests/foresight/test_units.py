"""``byte_size``: command-line sizes with decimal and binary units; anything else is refused."""

from __future__ import annotations

import argparse

import pytest

from foresight.units import byte_size


@pytest.mark.parametrize(("text", "value"), [("4096", 4096), ("512M", 512 * 10**6), ("200G", 200 * 10**9),
                                             ("1.5Ti", int(1.5 * 2**40)), ("64kb", 64_000), ("2GiB", 2 * 2**30)])
def test_sizes_parse_with_units(text: str, value: int) -> None:
    assert byte_size(text) == value


@pytest.mark.parametrize("text", ["", "G", "ten", "5Q", "-3G", "1..2M", "inf", "nan"])
def test_bad_sizes_are_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        byte_size(text)
