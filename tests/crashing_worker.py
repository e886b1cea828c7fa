"""A tokenise worker function that kills its own process on one clip, as a decoder's segfault would."""
import os
import signal

from mbt_core.data import cache

CRASH_ID = "crash-me"
_tokenise_clip = cache._tokenise_clip  # the real one, taken before a test patches the module


def tokenise_or_die(args):
    """cache._tokenise_clip, except that the clip CRASH_ID gets a SIGSEGV."""
    if args[0].clip_id == CRASH_ID:
        os.kill(os.getpid(), signal.SIGSEGV)
    return _tokenise_clip(args)
