"""Presets: names, errors, and every budgeted preset at or under its bpw for realistic shapes."""

import pytest

from carvq_gguf.codec.bits import bpw_from_config
from carvq_gguf.codec.presets import PRESET_NAMES, get_preset
from carvq_gguf.errors import CarvqError

BUDGETED = [name for name in PRESET_NAMES if get_preset(name).max_bpw is not None]


def test_expected_presets_exist():
    for name in ("carvq-1.2", "carvq-1.6", "carvq-2.0", "carvq-2.4", "carvq-1.6-rvq", "carvq-paper", "rvq-1.6"):
        assert name in PRESET_NAMES


def test_unknown_preset_is_a_clear_error():
    with pytest.raises(CarvqError, match="unknown preset 'carvq-9'"):
        get_preset("carvq-9")


@pytest.mark.parametrize("name", BUDGETED)
@pytest.mark.parametrize("n", [576, 768, 960, 1024, 1536, 2048])
@pytest.mark.parametrize("V", [32000, 49152, 151936, 262144])
def test_budgeted_presets_stay_under_their_bpw(name, n, V):
    preset = get_preset(name)
    r = preset.resolve(V, n)
    value = bpw_from_config(V, n, r.rvq, r.adaptor, r.correction_rows, r.trellis)
    assert value <= preset.max_bpw
    assert value > preset.max_bpw - 0.01  # the budget is actually spent


def test_paper_preset_is_faithful():
    r = get_preset("carvq-paper").resolve(49152, 576)
    assert (r.rvq.group_layout, r.rvq.group_size, r.rvq.subvector_dim, r.rvq.codebook_size) == ("block", 1024, 8, 16)
    assert (r.adaptor.table_dim, r.adaptor.hidden_dims) == (16, (384, 512))
    assert not r.train.weighted and r.correction_rows == 0


def test_rvq_only_variant_has_no_adaptor():
    r = get_preset("rvq-1.6").resolve(49152, 576)
    assert not r.adaptor.enabled and r.correction_rows == 0
    assert r.rvq == get_preset("carvq-1.6-rvq").resolve(49152, 576).rvq


def test_main_presets_code_rows_with_the_trellis_at_their_rate():
    """Bits per value of the trellis codes: what each budget spends on every row."""
    rates = {name: get_preset(name).resolve(49152, 576).trellis for name in ("carvq-1.2", "carvq-1.6", "carvq-2.0",
                                                                            "carvq-2.4")}
    assert {name: c.step_bits / c.step_dim for name, c in rates.items()} == {
        "carvq-1.2": 1.0, "carvq-1.6": 1.5, "carvq-2.0": 1.5, "carvq-2.4": 2.0}
    assert get_preset("carvq-1.6-rvq").trellis is None


def test_trellis_preset_keeps_its_tables_for_real_shapes_and_halves_them_for_small_ones():
    preset = get_preset("carvq-1.6")
    assert preset.resolve(49152, 576).trellis.groups == 8
    assert preset.resolve(262144, 640).trellis.groups == 8
    small = preset.resolve(20000, 64)  # 8 tables of 1024 x 2 F16 would not fit 1.6 bpw
    assert small.trellis.groups == 2
    assert bpw_from_config(20000, 64, small.rvq, small.adaptor, small.correction_rows, small.trellis) <= 1.6
