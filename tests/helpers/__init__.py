"""Shared contract checks that every registered entry of an extension point passes (collected by test files)."""
