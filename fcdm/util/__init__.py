"""Small operating-system helpers every layer uses: atomic file writes and file digests (`files`),
signal handlers installed for a block (`signals`), a free TCP port (`net`), child processes that die
with their parent (`process`). They know nothing of diffusion, runs or specs and import nothing from
the rest of fcdm."""
