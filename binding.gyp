{
  "targets": [
    {
      "target_name": "weft",
      "sources": [
        "dataplane/native/addon.cc",
        "dataplane/native/arena_pages.cc",
        "dataplane/native/errors.cc",
        "dataplane/native/nft_gen.cc",
        "dataplane/native/file_pages.cc",
        "dataplane/native/notify.cc",
        "dataplane/native/offload.cc",
        "dataplane/native/packet_fd.cc",
        "dataplane/native/tun.cc",
        "dataplane/native/udp_socket.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_DISABLE_CPP_EXCEPTIONS", "NODE_ADDON_API_DISABLE_DEPRECATED"],
      "cflags!": ["-O3"],
      "cflags_cc!": ["-std=gnu++17"],
      "cflags": ["-O2", "-Wall", "-Wextra"],
      "cflags_cc": ["-std=c++17"]
    }
  ]
}
