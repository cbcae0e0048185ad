"""Configuration: frozen dataclass schema, one ``a.b=value`` override parser, presets, loading."""
