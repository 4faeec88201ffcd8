"""Pipeline families: each folder holds what is specific to one family of recipes and reuses the engine for the
rest (see docs/architecture.md, "Adding a family"). Engine code never imports a family."""
