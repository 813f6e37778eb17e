import json

import pytest

from hpo.spec import SpecError, from_dict, from_json, load_spec
from tests.conftest import STUDIES


@pytest.mark.parametrize("path", sorted(STUDIES.glob("*.toml")), ids=lambda p: p.name)
def test_shipped_specs_load_and_round_trip(path):
    spec = load_spec(path)
    again = from_dict(json.loads(spec.to_json()), source="stored")
    assert again == spec


def test_book_random_is_the_book():
    s = load_spec(STUDIES / "book-random.toml")
    lr, wd = s.search
    assert (lr.name, lr.low, lr.high, lr.log) == ("lr", 1e-6, 1e-2, True)
    assert (wd.name, wd.low, wd.high, wd.log) == ("weight_decay", 1e-8, 1e-4, True)
    assert s.n_trials == 100 and s.sampler == "random"
    assert s.model.hidden == (100,) * 6 and s.model.epochs == 50 and s.model.batch_size == 100
    assert s.data.train_size == 500 and s.data.validation_rate == 0.2


def test_book_narrowing_stages():
    s = load_spec(STUDIES / "book-narrowing.toml")
    assert s.sampler == "narrowing" and s.n_trials == 300
    assert s.sampler_options["stage_trials"] == 100


def _spec(**override):
    base = {
        "name": "x",
        "search": {"lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}},
    }
    base.update(override)
    return base


@pytest.mark.parametrize(
    "raw, match",
    [
        (_spec(colour="red"), r"f.toml: colour: unknown key; allowed:"),
        (_spec(model={"epocs": 3}), r"model.epocs: unknown key"),
        (_spec(search={}), r"search: needs at least one parameter"),
        (_spec(search={"lr": {"low": 1.0, "high": 0.1}}), r"search.lr: low must be < high"),
        (_spec(search={"lr": {"low": 0.0, "high": 0.1, "log": True}}), r"log range needs low > 0"),
        (_spec(search={"colour": {"low": 0, "high": 1}}), r"search.colour: unknown parameter"),
        (_spec(search={"lr": {"type": "complex", "low": 0, "high": 1}}), r"'complex' is not one"),
        (_spec(search={"optimizer": {"type": "categorical", "choices": ["sgd", "lbfgs"]}}),
         r"'lbfgs' is not allowed; allowed: sgd, momentum"),
        (_spec(search={"hidden_width": {"type": "float", "low": 1, "high": 9}}),
         r"must be int or categorical"),
        (_spec(sampler={"name": "grid"}), r"sampler.name: 'grid' is not one of narrowing"),
        (_spec(pruner={"name": "sometimes"}), r"pruner.name: 'sometimes' is not one of none"),
        (_spec(budget={"n_trials": 0}), r"budget.n_trials: must be >= 1"),
        (_spec(data={"dataset": "cifar"}), r"data.dataset: 'cifar' is not one of"),
        (_spec(data={"validation_rate": 1.0}), r"data.validation_rate: must be in"),
        (_spec(data={"train_size": 10**6}), r"larger than"),
        (_spec(model={"hidden": [100, -1]}), r"model.hidden: must be a list of positive"),
        (_spec(model={"eval_every": 0}), r"model.eval_every: must be >= 1"),
        (_spec(search={"lr": {"low": 0.01, "high": 0.1, "step": 0.04}}),
         r"f.toml: search.lr.step: must divide high - low \(0.09\) evenly, got 0.04 "
         r"\(e.g. high = 0.09\)"),
        (_spec(search={"hidden_width": {"type": "int", "low": 4, "high": 10, "step": 4}}),
         r"f.toml: search.hidden_width.step: must divide high - low \(6\) evenly, got 4 "
         r"\(e.g. high = 8\)"),
        (_spec(search={"weight_decay": {"low": 0, "high": 1e30, "step": 1e-10}}),
         r"f.toml: search.weight_decay.step: is too small for the range: \(high - low\) / step "
         r"must be below 1e28, got 1e-10"),
    ],
)
def test_errors_name_file_key_and_allowed(raw, match):
    with pytest.raises(SpecError, match=match) as e:
        from_dict(raw, source="f.toml")
    assert "\n" not in str(e.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(SpecError, match="spec file not found"):
        load_spec(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [unclosed\n")
    with pytest.raises(SpecError, match=r"bad.toml: not valid TOML"):
        load_spec(bad)


def test_name_defaults_to_file_stem(tmp_path):
    p = tmp_path / "my-study.toml"
    p.write_text('[search.lr]\nlow = 0.001\nhigh = 0.1\nlog = true\n')
    assert load_spec(p).name == "my-study"


@pytest.mark.parametrize("name, param", [
    ("lr", {"low": 0.01, "high": 0.1, "step": 0.03}),  # 0.09 / 0.03: a multiple, as written
    ("lr", {"low": 0.1, "high": 0.7, "step": 0.2}),
    ("weight_decay", {"low": 0, "high": 1e-3, "step": 1e-4}),
    ("hidden_width", {"type": "int", "low": 4, "high": 12, "step": 4}),
    ("weight_decay", {"low": 0, "high": 1e27, "step": 1}),
])
def test_a_step_that_divides_the_range_is_taken_as_optuna_takes_it(name, param):
    """Accepted ranges are exactly those Optuna takes unchanged: no warning, no moved high."""
    import warnings

    from optuna.distributions import FloatDistribution, IntDistribution

    (p,) = from_dict(_spec(search={name: param}), source="f.toml").search
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cls = IntDistribution if p.type == "int" else FloatDistribution
        assert cls(p.low, p.high, step=p.step).high == p.high


def test_a_stored_spec_with_a_step_that_does_not_divide_its_range_is_still_read():
    """A study made before the step check was added (Optuna moved its high down, warning) is
    still read from its stored spec, so that `hpo best`, `report` and workers keep working on
    it; a spec file with that step is refused."""
    raw = _spec(search={"lr": {"low": 0.01, "high": 0.1, "step": 0.04}})
    with pytest.raises(SpecError, match=r"search\.lr\.step: must divide"):
        from_dict(raw, source="f.toml")
    (p,) = from_dict(raw, source="study 's'", stored=True).search
    assert (p.low, p.high, p.step) == (0.01, 0.1, 0.04)
    assert from_json(json.dumps(raw)).search == (p,)

def test_a_spec_knows_the_file_it_was_read_from(tmp_path):
    """``Spec.source`` is where errors found after validation can say the spec came from; it is
    not part of the spec (equality, to_dict)."""
    p = tmp_path / "s.toml"
    p.write_text('[search.lr]\nlow = 0.001\nhigh = 0.1\nlog = true\n')
    spec = load_spec(p)
    assert spec.source == str(p) and spec.replace(n_trials=3).source == str(p)
    again = from_dict(json.loads(spec.to_json()), source="study 's'")
    assert again.source == "study 's'" and again == spec and "source" not in spec.to_dict()


TOO_LONG = "9" * 5000


@pytest.mark.parametrize("text, message", [
    (f'name = "x"\n[budget]\nn_trials = {TOO_LONG}\n',
     "b.toml: budget.n_trials: an integer of 5000 digits on line 3 is too long to read "
     "(at most 4300 digits)"),
    (f'description = "{TOO_LONG}"\n[model]\nhidden = [8,\n  -{TOO_LONG}]\n',
     "b.toml: model.hidden[1]: an integer of 5000 digits on line 4 is too long"),
    (f'seed = {TOO_LONG[:2500]}_{TOO_LONG[:2500]}\n', "b.toml: seed: an integer of 5000 digits"),
    (f'seed = {TOO_LONG}\n[data\n', "b.toml: an integer of 5000 digits on line 1 is too long"),
])
def test_an_integer_too_long_to_read_names_its_key_and_line(tmp_path, text, message):
    bad = tmp_path / "b.toml"
    bad.write_text(text)
    with pytest.raises(SpecError) as e:
        load_spec(bad)
    assert str(e.value).startswith(f"{tmp_path}/{message}"), str(e.value)
    assert "\n" not in str(e.value)
