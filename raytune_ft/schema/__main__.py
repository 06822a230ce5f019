"""`python -m raytune_ft.schema`: print the configuration reference (docs/configuration.md)."""

from raytune_ft.schema._reference import configuration_reference

print(configuration_reference(), end="")
