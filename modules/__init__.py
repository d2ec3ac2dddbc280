"""LightningModules, one technique per file; plain nn.Modules live in modules.nets."""
