"""nn.Modules shared by several families (Mamba mixers, causal conv1d, SS2D ...). Import the module you need."""
