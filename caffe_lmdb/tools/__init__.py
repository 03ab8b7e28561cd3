"""Tools built on the reader: contact sheets and plots (:mod:`caffe_lmdb.tools.show`)."""
