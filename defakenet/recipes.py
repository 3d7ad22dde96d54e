"""Named recipes: tested starting points, each a partial config laid under the user's own settings.

`--recipe NAME` (train, tune), `train.recipe: NAME` in a config file and `--set train.recipe=NAME` are the same
thing: the recipe's settings replace the defaults, and everything the user sets (file ← flags ← --set) still wins.
The resolved values are what a run logs, so a run reproduces from its params with or without the recipe.
`defakenet config recipes` lists them; docs/quality.md has the measurements behind each.
"""

from __future__ import annotations

from typing import Any

# name → {about, settings: {"section.key": value}}
RECIPES: dict[str, dict[str, Any]] = {
    "paper": {
        "about": "DeFakeNet as published (Samal et al. 2025): 224 px, resize, Wang et al. augmentation; meant for "
                 "fine-tuning Keras ImageNet weights (--weights) on a GPU. The defaults, named.",
        "settings": {},
    },
}


def recipe_settings(name: str) -> dict[str, Any]:
    """The `section.key` settings of recipe `name`; ConfigError listing the recipes for an unknown one."""
    from defakenet.errors import ConfigError

    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; recipes: {', '.join(RECIPES)} (see `defakenet config recipes`)")
    return dict(RECIPES[name]["settings"])
