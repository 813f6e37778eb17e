import json

import pytest

from hpo.spec import SpecError, from_dict, load_spec
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
