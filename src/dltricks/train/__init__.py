"""The trainer: ``fit(model, data, recipe) -> metrics``."""
