"""Tools for trying trtbatch, off the serving path: making models with Paddle (``modelmake``) and
the end-to-end demo (``demo``). Nothing in producer/ or workers/ imports them."""
