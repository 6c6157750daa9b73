"""Developer tools, never shipped in an image: the local control plane, the test bed of real
processes and fault proxies, the fault campaign, the deterministic simulator, the demo."""
