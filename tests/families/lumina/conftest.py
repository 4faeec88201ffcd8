from lumina_corpus import lumina_inputs  # noqa: F401 - a session fixture shared by the Lumina tests
