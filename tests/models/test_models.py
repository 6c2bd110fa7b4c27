"""The FCDM and DiT families: presets, conditioning types, label dropout, init, checkpointing, state dicts, errors."""
import pytest
import torch

from fcdm.models import CONDITIONING_TYPES, DIT_PRESETS, FCDM, LABEL_DROPOUT_TYPES, create_model, list_models
from fcdm.models.flops import count_params

# Exact counts of the FCDM paper's model table (the presets in fcdm.models).
FCDM_PARAMS = {"FCDM-S": 32_699_912, "FCDM-B": 127_675_400, "FCDM-L": 504_453_128, "FCDM-XL": 698_754_056}


def tiny(**overrides) -> FCDM:
    kwargs = dict(in_channels=1, hidden_size=8, depth=[1, 1, 1, 1, 1], num_classes=10)
    return FCDM(**{**kwargs, **overrides})


def inputs(n=2, c=1, s=8):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, c, s, s, generator=g), torch.randint(0, 1000, (n,), generator=g), torch.arange(n) % 10


@pytest.mark.parametrize("name,expected", FCDM_PARAMS.items())
def test_fcdm_preset_parameter_counts_are_exact(name, expected):
    with torch.device("meta"):
        assert count_params(create_model(name)) == expected


def test_dit_xl2_parameter_count_matches_published():
    with torch.device("meta"):
        assert abs(count_params(create_model("DiT-XL/2")) - 675e6) < 0.5e6


def test_sixteen_presets():
    assert len(list_models()) == 16 and len(DIT_PRESETS) == 12


@pytest.mark.parametrize("conditioning", CONDITIONING_TYPES)
@pytest.mark.parametrize("learn_sigma", [True, False])
def test_output_shape_for_every_conditioning_type(conditioning, learn_sigma):
    model = tiny(conditioning=conditioning, learn_sigma=learn_sigma)
    x, t, y = inputs()
    out = model(x, t, y)
    assert out.shape == (2, 2 if learn_sigma else 1, 8, 8)
    out.sum().backward()  # every conditioning type must be differentiable end to end


def randomised(model):
    """Break the zero init so the output depends on every input."""
    for p in model.parameters():
        p.data.normal_(0, 0.1)
    return model


def test_unconditional_has_no_class_input_but_conditions_blocks_on_the_timestep():
    torch.manual_seed(0)
    model = randomised(tiny(conditioning="unconditional")).eval()
    assert not model.class_conditional
    assert not any("y_embedder" in n for n, _ in model.named_parameters())
    x, t, _ = inputs()
    out = model(x, t)  # no labels at all
    assert torch.equal(out, model(x, t, torch.zeros(2, dtype=torch.long)))
    assert torch.equal(out, model(x, t, torch.full((2,), 7)))
    # The blocks keep adaLN-Zero, driven by the timestep alone.
    assert model.latent[0].adaLN_modulation[-1].out_features == 3 * 32
    assert not torch.equal(out, model(x, t + 100))


def test_conditioning_none_is_refused_with_its_new_name():
    with pytest.raises(ValueError, match="conditioning='none' is now called 'unconditional'"):
        tiny(conditioning="none")


def test_guidance_is_refused_for_an_unconditional_model():
    model = tiny(conditioning="unconditional").eval()
    x, t, _ = inputs()
    xx, tt, yy = torch.cat([x, x]), torch.cat([t, t]), torch.tensor([1, 2, 10, 10])
    with pytest.raises(ValueError, match="cfg_scale=1.5 .*needs a class-conditional model.*cfg_scale=1.0"):
        model.forward_with_cfg(xx, tt, yy, cfg_scale=1.5)
    for scale in (1.0, 0.5):  # no guidance asked for: the conditional output, as the config layer allows
        assert torch.equal(model.forward_with_cfg(xx, tt, yy, cfg_scale=scale), model(xx, tt))
    with pytest.raises(ValueError, match="class-conditional: pass labels y"):
        tiny()(x, t)  # a conditional model without labels says what it needs


def test_adaln_zero_output_is_zero_at_construction():
    model = tiny()
    x, t, y = inputs()
    assert torch.count_nonzero(model(x, t, y)) == 0
    # ...and every block is the identity, because its gate is zero.
    block = model.encoder_level_1[0]
    h = torch.randn(2, 8, 8, 8)
    assert torch.equal(block(h, torch.randn(2, 8)), h)


def test_adaln_is_not_zero_initialised():
    block = tiny(conditioning="adaln").encoder_level_1[0]
    assert block.adaLN_modulation[-1].weight.abs().sum() > 0
    assert block.adaLN_modulation[-1].out_features == 2 * 8  # shift and scale, no gate


def test_shared_embedders_use_one_embedder_of_width_c():
    model = tiny(shared_embedders=True)
    names = {n.split(".")[0] for n, _ in model.named_parameters()}
    assert {"t_embedder", "y_embedder"} <= names and "t_embedder_2" not in names
    assert model.latent[0].adaLN_modulation[-1].in_features == 8
    x, t, y = inputs()
    assert model(x, t, y).shape == (2, 2, 8, 8)


def test_embedders_exist_only_for_levels_that_read_them():
    """Unused parameters would break DDP (and inflate parameter counts of shallow ablations)."""
    names = lambda m: {n.split(".")[0] for n, _ in m.named_parameters() if n.startswith(("t_embedder", "y_embedder"))}
    assert names(tiny(depth=[1, 0, 1, 0, 1])) == {"t_embedder_1", "y_embedder_1", "t_embedder_3", "y_embedder_3"}
    assert names(tiny(conditioning="unconditional")) == {"t_embedder_1", "t_embedder_2", "t_embedder_3"}
    assert names(tiny(conditioning="unconditional", depth=[1, 0, 1, 0, 1])) == {"t_embedder_1", "t_embedder_3"}
    x, t, y = inputs()
    for model in (tiny(depth=[1, 0, 1, 0, 1]), tiny(depth=[1, 1, 0, 1, 1]), tiny(conditioning="unconditional")):
        model(x, t, y).sum().backward()
        assert all(p.grad is not None for p in model.parameters())


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    ref = tiny(class_dropout_prob=0.0)
    for p in ref.parameters():
        p.data.normal_(0, 0.1)
    ckpt = tiny(class_dropout_prob=0.0, gradient_checkpointing=True)
    ckpt.load_state_dict(ref.state_dict())
    x, t, y = inputs()
    for m in (ref, ckpt):
        m.train()
        (m(x, t, y) ** 2).mean().backward()
    for (name, a), b in zip(ref.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


@pytest.mark.parametrize("name", ["FCDM-S", "DiT-S/8"])
def test_state_dict_of_a_preset_loads_strictly_into_a_fresh_one(name):
    a, b = create_model(name), create_model(name)
    for p in a.parameters():
        p.data.normal_(0, 0.02)
    b.load_state_dict(a.state_dict(), strict=True)
    a.eval(), b.eval()
    x = torch.randn(1, 4, 32, 32)
    t, y = torch.tensor([500]), torch.tensor([3])
    assert torch.equal(a(x, t, y), b(x, t, y))


def test_fcdm_state_dict_names_follow_the_public_release():
    keys = set(create_model("FCDM-S").state_dict())
    for k in ["x_embedder.weight", "t_embedder_3.mlp.2.weight", "y_embedder_2.embedding_table.weight",
              "encoder_level_1.0.dwconv.weight", "encoder_level_1.0.grn.gamma", "latent.7.adaLN_modulation.1.bias",
              "down1_2.conv.0.weight", "up3_2.conv.0.weight", "reduce_chans_1.weight", "decoder_level_1.1.pwconv2.bias",
              "output_layer.weight", "final_layer.adaLN_modulation.1.weight", "final_layer.conv.weight"]:
        assert k in keys, k


def test_dit_state_dict_names_follow_the_public_release():
    keys = set(create_model("DiT-S/8").state_dict())
    for k in ["x_embedder.proj.weight", "pos_embed", "t_embedder.mlp.0.weight", "y_embedder.embedding_table.weight",
              "blocks.11.attn.qkv.weight", "blocks.0.attn.proj.bias", "blocks.0.mlp.fc1.weight",
              "blocks.0.adaLN_modulation.1.weight", "final_layer.linear.weight", "final_layer.adaLN_modulation.1.bias"]:
        assert k in keys, k


@pytest.mark.parametrize("k", [3, 5, 7, 9, 11])
def test_kernel_sizes_3_to_11_build_and_run(k):
    model = tiny(kernel_size=k)
    assert model.encoder_level_1[0].dwconv.kernel_size == (k, k)
    x, t, y = inputs()
    assert model(x, t, y).shape == (2, 2, 8, 8)


def test_grn_off_removes_its_parameters():
    on, off = tiny(), tiny(grn=False)
    # gamma and beta of width r*D in the five blocks: D = 8, 16, 32, 16, 8 and r = 3
    assert count_params(on) - count_params(off) == 2 * 3 * (8 + 16 + 32 + 16 + 8)


@pytest.mark.parametrize("kwargs,needle", [
    (dict(kernel_size=4), "kernel_size=4"),
    (dict(depth=[1, 1, 1]), "depth=[1, 1, 1]"),
    (dict(conditioning="cross-attention"), "conditioning='cross-attention'"),
    (dict(label_dropout="shared"), "label_dropout='shared'"),
    (dict(class_dropout_prob=1.0), "class_dropout_prob=1.0"),
])
def test_bad_arguments_raise_value_errors_naming_argument_and_allowed_values(kwargs, needle):
    with pytest.raises(ValueError, match="allowed values") as err:
        tiny(**kwargs)
    assert needle in str(err.value)


def test_unknown_preset_and_unknown_override_are_clear():
    with pytest.raises(ValueError, match="FCDM-XXL.*allowed values: FCDM-S"):
        create_model("FCDM-XXL")
    with pytest.raises(ValueError, match="num_heads.*allowed arguments"):
        create_model("FCDM-S", num_heads=4)


@pytest.mark.parametrize("family", ["fcdm", "dit"])
def test_cfg_guides_all_channels_by_default_and_three_on_request(family):
    torch.manual_seed(0)
    model = tiny() if family == "fcdm" else create_model("DiT-S/8", input_size=8, in_channels=1, num_classes=10,
                                                          depth=1, hidden_size=24, num_heads=2)
    for p in model.parameters():
        p.data.normal_(0, 0.1)
    model.eval()
    c = model.in_channels
    x = torch.randn(2, c, 8, 8).repeat(2, 1, 1, 1)
    t = torch.tensor([10, 20, 10, 20])
    y = torch.tensor([1, 2, 10, 10])  # second half: the null class
    cond, uncond = model(x, t, y).chunk(2)
    guided = model.forward_with_cfg(x, t, y, cfg_scale=4.0)
    torch.testing.assert_close(guided[:2, :c], uncond[:, :c] + 4.0 * (cond[:, :c] - uncond[:, :c]))
    torch.testing.assert_close(guided[:2, c:], cond[:, c:])  # learned variance is not guided
    partial = model.forward_with_cfg(x, t, y, cfg_scale=4.0, guided_channels=0)
    torch.testing.assert_close(partial[:2], cond)


# --------------------------------------------------------------------------------------------------
# Label dropout: per level (the public release) or jointly over the levels
# --------------------------------------------------------------------------------------------------


def dropped_per_level(model, n=20_000, seed=0) -> torch.Tensor:
    """Train-mode draw of every level's label dropout for n samples: (levels, n) bool, True where that
    level's class embedder used the null row. Read from the embedders' outputs, not from the code path."""
    outputs = []
    hooks = [emb.register_forward_hook(lambda m, a, kw, out: outputs.append(out), with_kwargs=True)
             for emb in model._embedders("y")]
    model.train()
    torch.manual_seed(seed)
    with torch.no_grad():
        model.conditioning_vectors(torch.zeros(n, dtype=torch.long), torch.arange(n) % model.num_classes)
    for h in hooks:
        h.remove()
    return torch.stack([(out == emb.embedding_table.weight[emb.num_classes]).all(dim=1)
                        for out, emb in zip(outputs, model._embedders("y"))])


@pytest.mark.parametrize("kwargs,levels", [(dict(), 3), (dict(depth=[1, 0, 1, 0, 1]), 2),
                                           (dict(shared_embedders=True), 1)])
def test_joint_label_dropout_nulls_every_level_together_with_probability_p(kwargs, levels):
    p, n = 0.3, 20_000
    tol = 4 * (p * (1 - p) / n) ** 0.5  # four standard errors
    per_level = dropped_per_level(tiny(class_dropout_prob=p, **kwargs), n)
    joint = dropped_per_level(tiny(class_dropout_prob=p, label_dropout="joint", **kwargs), n)
    assert per_level.shape[0] == joint.shape[0] == levels
    for drops in (per_level, joint):  # each level alone drops with probability p either way
        assert (drops.float().mean(dim=1) - p).abs().max() < tol
    # All levels null at once, the input guidance's unconditional pass feeds: p ** levels vs p.
    assert per_level.all(dim=0).float().mean().item() == pytest.approx(p ** levels, abs=tol)
    assert joint.all(dim=0).float().mean().item() == pytest.approx(p, abs=tol)
    assert torch.equal(joint.all(dim=0), joint.any(dim=0))  # never a partial drop


def test_label_dropout_modes_share_weights_and_the_eval_null_path():
    """Both modes have the same parameters (checkpoints move between them), agree in eval mode, null
    class included, and a jointly dropped training sample is exactly the eval-mode null-class output."""
    torch.manual_seed(0)
    per_level = randomised(tiny(class_dropout_prob=0.5))
    joint = tiny(class_dropout_prob=0.5, label_dropout="joint")
    joint.load_state_dict(per_level.state_dict(), strict=True)
    x, t, _ = inputs(8)
    y = torch.tensor([0, 1, 2, 3, 10, 10, 4, 5])  # 10 = the null class
    per_level.eval(), joint.eval()
    assert torch.equal(per_level(x, t, y), joint(x, t, y))
    joint.train()
    torch.manual_seed(1)
    trained = joint(x, t, y)
    torch.manual_seed(1)  # the joint draw is the forward's first random number
    drop = torch.rand(8) < 0.5
    assert 0 < drop.sum() < 8
    joint.eval()
    assert torch.equal(trained, joint(x, t, torch.where(drop, 10, y)))


def test_dit_accepts_label_dropout_and_both_modes_draw_the_same():
    kw = dict(input_size=8, in_channels=1, num_classes=10, depth=1, hidden_size=24, num_heads=2,
              class_dropout_prob=0.5)
    torch.manual_seed(0)
    a = randomised(create_model("DiT-S/8", **kw))
    b = create_model("DiT-S/8", label_dropout="joint", **kw)
    b.load_state_dict(a.state_dict())
    x, t, y = inputs(8)
    outs = []
    for m in (a, b):
        torch.manual_seed(3)
        outs.append(m.train()(x, t, y))
    assert torch.equal(*outs)
    assert set(LABEL_DROPOUT_TYPES) == {"per-level", "joint"}
    with pytest.raises(ValueError, match="label_dropout='levels' is not supported; allowed values"):
        create_model("DiT-S/8", label_dropout="levels", **kw)


def test_layernorm2d_keeps_channels_last_and_gives_the_same_numbers():
    """Issue 18: a channels-last feature map stays channels-last (no copy back to NCHW); values bit for bit."""
    from fcdm.models.layers import LayerNorm2d

    torch.manual_seed(0)
    norm = LayerNorm2d(8)
    norm.weight.data.normal_()
    norm.bias.data.normal_()
    x = torch.randn(2, 8, 5, 5)
    nchw, nhwc = norm(x), norm(x.contiguous(memory_format=torch.channels_last))
    assert nchw.is_contiguous() and nhwc.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(nchw, nhwc)


def test_grn_stays_in_the_input_dtype_under_autocast_and_is_unchanged_in_fp32():
    from fcdm.models.fcdm import GRN

    torch.manual_seed(0)
    grn = GRN(12)
    grn.gamma.data.normal_()
    grn.beta.data.normal_()
    x = torch.randn(2, 12, 4, 4)
    gx = torch.norm(x, p=2, dim=(2, 3), keepdim=True)
    reference = grn.gamma * (x * (gx / (gx.mean(dim=1, keepdim=True) + 1e-6))) + grn.beta + x
    assert torch.equal(grn(x), reference)  # fp32: the casts are no-ops
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = grn(x.bfloat16())
    assert low.dtype == torch.bfloat16  # was promoted to fp32 (3C-wide) by the fp32 norm and parameters
    torch.testing.assert_close(low.float(), reference, rtol=0.05, atol=0.05)
