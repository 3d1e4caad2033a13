"""Shared test code: contracts every registered entry of an extension point must pass."""
