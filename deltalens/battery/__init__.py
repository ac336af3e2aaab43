"""The probe battery: typed config, resumable runner, verdicts."""

from deltalens.battery.config import BatteryConfig, ConfigError, FamilyConfig
from deltalens.battery.runner import Battery, validate_family

__all__ = ["Battery", "BatteryConfig", "ConfigError", "FamilyConfig", "validate_family"]
