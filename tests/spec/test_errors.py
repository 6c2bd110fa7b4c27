"""Malformed specs through the CLI, as a user meets them: `fcdm-ablate plan SPEC` prints one line
"error: <file>: <key path>: <value>: <fix>", exits 2, shows no traceback and writes nothing."""
import pytest
from helpers import SMOKE
from typer.testing import CliRunner

from fcdm.cli import app

runner = CliRunner()
HEAD = f"name: t\nbase: {SMOKE}\n"
KERNELS = HEAD + "axes:\n  model.args.kernel_size: [3, 5]\n"
PROFILES = HEAD + "profiles:\n  smoke: {}\n  paper: {}\n"
LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(8))

CASES = [
    # -- the file and its YAML --
    ("empty", b"", [], ["the file is empty"]),
    ("comments-only", b"# nothing here\n\n", [], ["the file is empty"]),
    ("root-list", "- kernel_size\n- design\n", [], ["the top level is a list"]),
    ("root-scalar", "kernel_size\n", [], ["the top level is a string"]),
    ("duplicate-key", HEAD + "name: u\n", [], ["line 3: key 'name' appears twice", "first on line 1", "keep one"]),
    ("python-tag", "name: !!python/object/apply:os.system ['echo pwned']\n", [],
     ["line 1: YAML tag '!!python/object/apply:os.system' is not allowed", "remove the tag"]),
    ("custom-tag", HEAD + "axes: !include other.yaml\n", [], ["line 3: YAML tag '!include' is not allowed"]),
    ("binary-tag", HEAD + "description: !!binary aGVsbG8=\n", [], ["YAML tag '!!binary' is not allowed"]),
    ("alias-bomb", LAUGHS, [], ["expand to more than 100,000 values (an alias bomb?)"]),
    ("recursive-alias", HEAD + "axes: &a {x: *a}\n", [], ["line 3: an alias refers to the node that contains it"]),
    ("tab-indent", HEAD + "axes:\n\tmodel.args.kernel_size: [3]\n", [], ["line 4: tab in the indentation", "spaces"]),
    ("binary-content", b"name: t\x00\x01\x02\n", [], ["binary content (NUL byte at offset 7)"]),
    ("not-utf8", "name: caf\xe9\n".encode("latin-1"), [], ["byte 9 (0xe9) is not UTF-8", "save the spec as UTF-8"]),
    ("syntax", HEAD + "axes: {model.args.kernel_size: [3, 5}\n", [], ["line 3", "not valid YAML"]),
    ("two-documents", HEAD + "---\nname: u\n", [], ["a second YAML document ('---')"]),
    ("non-string-key", HEAD + "axes:\n  1: [2]\n", [], ["line 4: key 1 is a number, not a string: quote it"]),
    # issue 16 item 10: nesting thousands deep was a RecursionError (3,000 lines of traceback); 100 deep passes
    # the parser but not the depth limit (an alias counts at the depth it is used)
    ("nested-thousands", HEAD + "description: " + "[" * 5000 + "]" * 5000 + "\n", [],
     ["values nested too deeply to read", "flatten it"]),
    ("nested-block", HEAD + "description:\n" + "".join(" " * i + "-\n" for i in range(1, 1400)), [],
     ["values nested", "flatten it"]),
    ("nested-100", HEAD + "description: " + "[" * 100 + "]" * 100 + "\n", [],
     ["line 3: values nested more than 64 levels deep"]),
    ("nested-by-aliases", HEAD + "a: &a " + "[" * 40 + "]" * 40 + "\ndescription: " + "[" * 40 + "*a" + "]" * 40 + "\n",
     [], ["values nested more than 64 levels deep"]),
    # -- top-level keys --
    ("missing-name", f"base: {SMOKE}\n", [], ["name: null: required"]),
    ("bad-name", f"name: kernel size!\nbase: {SMOKE}\n", [], ["name: kernel size!: required; letters, digits"]),
    ("name-trailing-newline", f'name: "kernel_size\\n"\nbase: {SMOKE}\n', [], ['name: "kernel_size\\n": required; letters, digits']),
    ("typo-top-key", HEAD + "axis:\n  model.args.kernel_size: [3]\n", [], ["axis: unknown spec key", "did you mean 'axes'?"]),
    ("section-at-top", HEAD + "train: {steps: 10}\n", [], ["train: unknown spec key", "belongs under base or a profile"]),
    ("base-missing-file", "name: t\nbase: nope.yaml\n", [], ["base: nope.yaml: no such run config file"]),
    ("base-not-mapping", "name: t\nbase: [1, 2]\n", [], ["base: [1, 2]: must be a run config mapping"]),
    ("base-unknown-key", "name: t\nbase: {trian: {steps: 3}}\n", [], ["base.trian: trian: unknown config key", "did you mean 'train'?"]),
    # -- axes, zip, variants, seeds, exclude, include --
    ("unknown-config-key", HEAD + "axes:\n  train.lrr: [0.1]\n", [], ["axes.train.lrr: train.lrr: unknown config key",
                                                                      "did you mean 'train.lr'?"]),
    ("seed-as-axis", HEAD + "axes:\n  seed: [1, 2]\n", [], ["axes.seed: seed: set by the spec itself", "seeds"]),
    ("empty-axis", HEAD + "axes:\n  model.args.kernel_size: []\n", [], ["axes.model.args.kernel_size: []",
                                                                        "an axis needs at least one value"]),
    ("axis-not-list", HEAD + "axes:\n  model.args.kernel_size: 3\n", [], ["axes.model.args.kernel_size: 3: must be a list"]),
    ("axis-repeats", HEAD + "axes:\n  model.args.kernel_size: [3, 3]\n", [], ["lists 3 twice"]),
    ("zip-unequal", HEAD + "zip:\n  - {model.args.kernel_size: [3, 5], train.lr: [0.001]}\n", [],
     ["zip[0]: model.args.kernel_size has 2, train.lr has 1", "need equal lengths"]),
    ("axis-and-zip", KERNELS + "zip:\n  - {model.args.kernel_size: [7], train.lr: [0.001]}\n", [],
     ["zip[0].model.args.kernel_size: set by axes too"]),
    ("even-kernel", HEAD + "axes:\n  model.args.kernel_size: [3, 4]\n", [],
     ["axes.model.args.kernel_size: 4 (job 't/kernel_size=4')", "kernel_size=4 is not supported", "odd integers"]),
    ("non-positive-kernel", HEAD + "axes:\n  model.args.kernel_size: [-1]\n", [],
     ["axes.model.args.kernel_size: -1", "kernel_size=-1 is not supported"]),
    ("depth-length", HEAD + "axes:\n  model.args.depth: [[1, 1, 1]]\n", [],
     ["axes.model.args.depth: [1, 1, 1]", "five non-negative integers"]),
    ("arg-family-lacks", HEAD + "axes:\n  model.args.num_heads: [4]\n", [],
     ["job 't/num_heads=4'", "unknown key 'model.args.num_heads' for FCDM-S", "allowed keys"]),
    ("wrong-type", HEAD + "axes:\n  train.steps: [many]\n", [], ["job 't/steps=many'", "train.steps='many' is invalid"]),
    ("duplicate-jobs", HEAD + "axes:\n  eval.cfg_scale: [1.0, 2.0]\n", [],
     ["jobs 't/cfg_scale=1' and 't/cfg_scale=2' (seed 0): the same run", "remove one"]),
    ("unconditional-guided", HEAD + "axes:\n  model.args.conditioning: [unconditional]\n", [],
     ["eval.cfg_scale=2 needs a class-conditional model", "set eval.cfg_scale: 1.0"]),
    ("variant-no-name", HEAD + "variants:\n  - {set: {model.args.grn: false}}\n", [], ["variants[0].name: null: required"]),
    ("variant-name-newline", HEAD + 'variants:\n  - {name: "a\\n"}\n', [], ['variants[0].name: "a\\n": required; letters']),
    ("profile-name-newline", HEAD + 'profiles:\n  "smoke\\n": {}\n', [], ['profiles: "smoke\\n": a profile name uses letters, digits']),
    ("variant-twice", HEAD + "variants:\n  - {name: a}\n  - {name: a}\n", [], ["variants[1].name: a: two variants share"]),
    ("variant-bad-set", HEAD + "variants:\n  - {name: a, set: {model.args.grn: false, modle.name: x}}\n", [],
     ["variants[a].set.modle.name", "did you mean 'model'?"]),
    ("seeds-negative", HEAD + "seeds: [0, -1]\n", [], ["seeds: [0, -1]: must be a non-empty list of non-negative integers"]),
    ("seeds-repeat", HEAD + "seeds: [1, 1]\n", [], ["seeds: [1, 1]: lists a seed twice"]),
    ("exclude-nothing", KERNELS + "exclude:\n  - {model.args.kernel_size: 7}\n", [], ["exclude[0]", "matches no job"]),
    ("exclude-non-grid", KERNELS + "exclude:\n  - {train.lr: 0.1}\n", [], ["exclude[0].train.lr: not a key of axes or zip"]),
    ("include-bad-variant", KERNELS + "include:\n  - {variant: nope, model.args.kernel_size: 9}\n", [],
     ["include[0].variant: nope: no such variant"]),
    ("baseline-no-job", KERNELS + "baseline: {model.args.kernel_size: 7}\n", [], ["baseline: ", "matches no job"]),
    # -- match_flops --
    ("impossible-target", HEAD + "match_flops: {target: 1.0e-6}\n", [],
     ["match_flops: job 't/base': no hidden_size within 2.0% of the target 1e-06 GFLOPs", "the closest is hidden_size=2",
      "solve a ratio after it (solve: [model.args.hidden_size, model.args.mlp_ratio])"]),
    ("impossible-ratio", HEAD + "match_flops: {target: 1.0e-6, solve: [model.args.hidden_size, model.args.mlp_ratio]}\n",
     [], ["match_flops: job 't/base': no hidden_size (and mlp_ratio after it) within 2.0%", "hidden_size=2"]),
    ("second-knob-int", HEAD + "match_flops: {solve: [model.args.hidden_size, model.args.kernel_size]}\n", [],
     ["match_flops.solve[1]: model.args.kernel_size: the second argument solved is a float ratio",
      "allowed values: model.args.mlp_ratio"]),
    ("solve-three", HEAD + "match_flops: {solve: [model.args.hidden_size, model.args.mlp_ratio, model.args.depth]}\n",
     [], ["match_flops.solve: [", "or a list of two"]),
    ("params-and-flops", HEAD + "match_flops: {target: base}\nmatch_params: {target: base}\n", [],
     ["match_params: {\"target\": \"base\"}: match_flops is set here too", "keep match_flops (GFLOPs) or match_params"]),
    ("params-impossible", HEAD + "match_params: {target: 10}\n", [],
     ["match_params: job 't/base': no hidden_size within 2.0% of the target 10 parameters"]),
    ("params-unknown-target", HEAD + "match_params: {target: wide}\n", [],
     ["match_params.target: wide: not 'base' and not a variant; allowed values: base, a number of parameters"]),
    ("variant-baseline-unknown", HEAD + "variants:\n  - {name: a}\n  - {name: b, baseline: c}\n", [],
     ["variants[b].baseline: c: no such variant; allowed values: a"]),
    ("variant-baseline-itself", HEAD + "variants:\n  - {name: a, baseline: a}\n", [],
     ["variants[a].baseline: a: the name of another variant"]),
    ("unknown-target", HEAD + "match_flops: {target: wide}\n", [], ["match_flops.target: wide: not 'base' and not a variant"]),
    ("solve-not-model", HEAD + "match_flops: {target: base, solve: train.lr}\n", [], ["match_flops.solve: train.lr"]),
    ("solve-a-list", HEAD + "match_flops: {target: 1.0, solve: model.args.depth}\n", [],
     ["match_flops.solve: model.args.depth", "not an integer"]),
    ("tolerance-range", HEAD + "match_flops: {target: base, tolerance: 2}\n", [], ["match_flops.tolerance: 2: must be a fraction"]),
    # -- profiles, launcher, search, command line --
    ("unknown-profile", PROFILES, ["--profile", "papr"], ["profiles: 'papr': no such profile", "did you mean 'paper'?",
                                                          "allowed values: smoke, paper"]),
    ("default-profile", PROFILES + "default_profile: nope\n", [], ["default_profile: nope: not a profile", "smoke, paper"]),
    ("profile-not-mapping", HEAD + "profiles:\n  smoke: [1]\n", [], ["profiles.smoke: [1]: must be a mapping"]),
    ("profile-typo", HEAD + "profiles:\n  smoke: {trian.steps: 5}\n", [],
     ["profiles.smoke.trian.steps: trian.steps: unknown config key", "did you mean 'train'?"]),
    ("launcher-name", HEAD + "launcher: {name: pbs}\n", [], ["launcher.name: pbs: allowed values: local, accelerate, slurm"]),
    ("launcher-slurm-key", HEAD + "launcher: {slurm: {partion: gpu}}\n", [], ["launcher.slurm.partion: unknown key",
                                                                             "did you mean 'partition'?"]),
    ("search-not-mapping", HEAD + "search: [1]\n", [], ["search", "must be a mapping"]),
    ("set-malformed", HEAD, ["--set", "train.steps"], ["--set 'train.steps': expected key.path=value"]),
    ("set-unknown-key", HEAD, ["--set", "train.stepz=3"], ["--set train.stepz=3: unknown config key", "did you mean 'train.steps'?"]),
]


def _plan(tmp_path, content, args):
    spec = tmp_path / "spec.yaml"
    spec.write_bytes(content if isinstance(content, bytes) else content.encode())
    store = tmp_path / "store"
    return spec, store, runner.invoke(app, ["plan", str(spec), "--store", str(store), *args])


@pytest.mark.parametrize("content,args,fragments", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_spec_is_one_line_exit_2_and_writes_nothing(tmp_path, content, args, fragments):
    spec, store, result = _plan(tmp_path, content, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    message = lines[0]
    prefix = "error: --set" if args and args[0] == "--set" else f"error: {spec}: "
    assert message.startswith(prefix), message
    for fragment in fragments:
        assert fragment in message, message
    assert not store.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]


def test_there_are_at_least_25_malformed_cases():
    assert len(CASES) >= 25


def test_missing_spec_and_directory(tmp_path):
    for path, fragment in ((tmp_path / "nope.yaml", "no such file"), (tmp_path, "is a directory")):
        result = runner.invoke(app, ["plan", str(path), "--store", str(tmp_path / "store")])
        assert result.exit_code == 2 and result.output.startswith(f"error: {path}: {fragment}"), result.output
    assert not (tmp_path / "store").exists()
