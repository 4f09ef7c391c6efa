"""Long lists of layer names in a run's first lines are folded into ranges, short ones kept whole."""

from dst.app.console import layer_list


def test_a_short_list_is_kept_name_by_name():
    names = ["Dense_0/kernel", "Dense_1/kernel", "Dense_2/kernel"]
    assert layer_list(names) == "Dense_0/kernel, Dense_1/kernel, Dense_2/kernel"


def test_a_vit_s_48_kernels_fold_into_one_entry_per_role():
    roles = ["query", "key", "value", "out"]
    names = [f"Block_{b}/Attention_0/{r}/kernel" for b in range(12) for r in roles]
    names += [f"Block_{b}/Dense_{d}/kernel" for b in range(12) for d in (0, 1)] + ["head/kernel"]
    text = layer_list(names)
    assert text == ("73 layers: " + ", ".join(f"Block_{{0..11}}/Attention_0/{r}/kernel" for r in roles)
                    + ", Block_{0..11}/Dense_{0..1}/kernel, head/kernel")


def test_numbers_with_gaps_are_listed_and_names_that_differ_in_text_stay_apart():
    names = [f"Conv_{i}/kernel" for i in (0, 1, 2, 5, 7, 8)] + [f"Dense_{i}/kernel" for i in range(3)]
    assert layer_list(names) == "9 layers: Conv_{0..2,5,7..8}/kernel, Dense_{0..2}/kernel"


def test_densities_fold_by_value_and_stay_whole_for_a_small_model():
    from dst.app.console import density_list

    small = {"Dense_0/kernel": 0.0796, "Dense_1/kernel": 0.2302, "Dense_2/kernel": 1.0}
    assert density_list(small) == "Dense_0/kernel=0.0796, Dense_1/kernel=0.2302, Dense_2/kernel=1.0000"
    vit = {f"block{b}/attn/qkv/kernel": 0.05 for b in range(12)}
    vit.update({f"block{b}/mlp_fc1/kernel": 0.03 for b in range(12)})
    vit["block3/mlp_fc1/kernel"] = 0.04                     # one layer apart: it breaks the range
    assert density_list(vit) == ("24 layers: block{0..11}/attn/qkv/kernel=0.0500, "
                                 "block{0..2,4..11}/mlp_fc1/kernel=0.0300, block3/mlp_fc1/kernel=0.0400")
