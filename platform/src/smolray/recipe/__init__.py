from smolray.recipe.load import RecipeError, apply_overrides, load_recipe, recipe_from_dict
from smolray.recipe.schema import (
    CheckpointConfig,
    DataConfig,
    ExportConfig,
    ModelConfig,
    OptimConfig,
    Recipe,
    RunSettings,
    ScheduleConfig,
    SourceConfig,
    TrainConfig,
)

__all__ = [
    "CheckpointConfig",
    "DataConfig",
    "ExportConfig",
    "ModelConfig",
    "OptimConfig",
    "Recipe",
    "RecipeError",
    "RunSettings",
    "ScheduleConfig",
    "SourceConfig",
    "TrainConfig",
    "apply_overrides",
    "load_recipe",
    "recipe_from_dict",
]
