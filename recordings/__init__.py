"""Call recordings: collection, transcoding, playback (see issue: recordings)."""
