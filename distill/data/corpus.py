

def prepare(builder) -> None:
  """`builder.download_and_prepare()` with one line of ours instead of TFDS's two banners.

  TFDS prints "Downloading and preparing dataset ..." and "... downloaded and prepared"
  on stdout for every build; the console keeps one line per stage, on stderr with the
  training progress.
  """
  import contextlib  # pylint: disable=import-outside-toplevel
  import io  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  import time  # pylint: disable=import-outside-toplevel
  t0 = time.time()
  banner = io.StringIO()
  with contextlib.redirect_stdout(banner):
    builder.download_and_prepare()
  if not banner.getvalue():  # already prepared: TFDS said nothing, neither do we
    return
  print(f"[data] built {builder.name} in {builder.data_dir} ({time.time() - t0:.0f} s)",
        file=sys.stderr, flush=True)
