"""Every published recipe's effective values (after `extends`) against the releases' values, kept as
data with their sources in tests/fixtures/release_recipes.yaml: a recipe value that drifts from its
release fails here."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from gdsd_lightning.config import list_experiments
from gdsd_lightning.experiment import load_experiment

TABLE = OmegaConf.to_container(OmegaConf.load(Path(__file__).parent / "fixtures" / "release_recipes.yaml"))
PUBLISHED = [name for name in list_experiments() if "_llada_" in name or "_dream_" in name]


def departures(recipe: str, entry: dict, overrides: list[str] = ()) -> list[str]:
    """One line per key of `entry` whose effective value in `recipe` is not the release's."""
    cfg = load_experiment(recipe, list(overrides))
    found = {key: OmegaConf.to_object(v) if OmegaConf.is_config(v := OmegaConf.select(cfg, key)) else v
             for key in entry["values"]}
    return [f"{recipe}: {key} is {found[key]!r}, the release's {value!r} ({entry['source']}:{line})"
            for key, (value, line) in entry["values"].items() if found[key] != pytest.approx(value)]


@pytest.mark.parametrize("recipe", PUBLISHED)
def test_the_published_recipe_has_the_release_values(recipe):
    entries = [entry for entry in TABLE if recipe in entry["recipes"]]
    assert entries, f"{recipe} is not in tests/fixtures/release_recipes.yaml"
    assert [line for entry in entries for line in departures(recipe, entry)] == []


def test_the_table_names_only_recipes_that_exist_and_catches_one_changed_value():
    assert {name for entry in TABLE for name in entry["recipes"]} <= set(PUBLISHED)
    (entry,) = [e for e in TABLE if e["source"].endswith("run_dmpo.sh")]
    assert departures("dmpo_llada_gsm8k", entry, ["rollout.temperature=0.9"]) == [
        "dmpo_llada_gsm8k: rollout.temperature is 0.9, the release's 0.2 (yuchen-zhu-zyc/DMPO@96af1a4 DMPO/run_dmpo.sh:73)"]
