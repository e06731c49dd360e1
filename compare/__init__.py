"""`darkroom compare`: send the same payloads to two endpoints that speak a hosted dialect (typically a hosted
provider and darkroom) and report latency, failures, cost and the images side by side."""
