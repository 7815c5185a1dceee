"""Typed training configuration: dataclasses, loadable from YAML, overridable as --section.key=value.

`schema` holds the dataclasses, every field documented once; `validate` checks the whole config up front and
names the field at fault; `load` reads YAML files and overrides. Import every name from here, `red_rlhf.config`.
"""

from red_rlhf.config.load import (  # noqa: F401
    CONFIG_DIR, find_config, from_dict, load_config, parse_override, read_yaml, shipped_configs, to_dict,
)
from red_rlhf.config.schema import (  # noqa: F401
    INPUT_FORMATS, SCORING_MODES, SOURCE_SHORTHAND, AlgoConfig, Config, ConfigError, DataConfig, KLConfig,
    LagrangianConfig, PolicyConfig, PrecisionConfig, RewardConfig, RolloutConfig, SourceConfig, TrainConfig,
    primary_source, reward_sources, source_paths,
)
from red_rlhf.config.validate import DTYPE_NAMES, TEMPERATURE_RANGE, validate  # noqa: F401
