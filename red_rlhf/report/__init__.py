"""What a user looks at: per-token reward heatmaps in the terminal and HTML (`heatmap`), training curves (`plots`)."""
