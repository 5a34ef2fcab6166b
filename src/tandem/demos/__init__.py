"""Ready-made, self-contained runs: the quickstart and the CPU testbed where SFT and preferences conflict."""
