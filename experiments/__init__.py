"""absl-flag programs that wire the cnnjax library together: training, studies, benchmarks."""
