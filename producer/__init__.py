"""trtbatch producer: the click CLI and the library it calls."""
