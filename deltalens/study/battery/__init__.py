"""The probe battery: typed config, resumable runner, verdicts."""

from deltalens.study.battery.config import BatteryConfig, ConfigError, FamilyConfig
from deltalens.study.battery.runner import Battery, validate_family

__all__ = ["Battery", "BatteryConfig", "ConfigError", "FamilyConfig", "validate_family"]
