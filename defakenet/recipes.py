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
    "scratch-faces": {
        "about": "From scratch (no pretrained weights) on aligned face crops, sized for a 2-core CPU: the whole face "
                 "resized to 96 px without random rescaling (the face's scale and framing are part of what tells "
                 "StyleGAN faces from FFHQ photos), the first three ResNet50V2 stages (conv2-conv4: less to overfit "
                 "on a few thousand images, twice as fast), 25 epochs (about 36 minutes on 2 cores). Measured in "
                 "docs/quality.md.",
        "settings": {
            "data.image_size": 96,
            "augment.scale_min": 1.0,
            "model.stages": 3,
            "train.epochs": 25,
            "train.batch_size": 16,  # per worker: 2 workers make the 32 the plain-loop search used
            "optim.lr": 1e-3,
            # what a study should vary from here: learning rate, depth, zoom (freeze depth needs pretrained weights)
            "tune.space": {"optim": {"lr": {"loguniform": [3e-4, 3e-3]}}, "model": {"stages": {"int": [2, 4]}},
                           "augment": {"scale_min": {"uniform": [0.8, 1.0]}}},
        },
    },
}


def recipe_settings(name: str) -> dict[str, Any]:
    """The `section.key` settings of recipe `name`; ConfigError listing the recipes for an unknown one."""
    from defakenet.errors import ConfigError

    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; recipes: {', '.join(RECIPES)} (see `defakenet config recipes`)")
    return dict(RECIPES[name]["settings"])
