"""What every job shares: params and their schema, the registries of named choices, errors, atomic files, stage CLIs."""
