{
  "targets": [
    {
      "target_name": "vdisk_native",
      "sources": [
        "native/vdisk.cc",
        "native/common.cc",
        "native/fileops.cc",
        "native/locks.cc",
        "native/blockdev.cc",
        "native/zero.cc",
        "native/aligned.cc",
        "native/datamap.cc",
        "native/ioqueue.cc",
        "native/ioqueue-pool.cc",
        "native/direct-io.cc",
        "native/writeback.cc",
        "native/nbd-plane.cc",
        "native/nbd-plane-core.cc"
      ],
      "include_dirs": [
        "<!(node -p \"require('node-addon-api').include_dir\")"
      ],
      # Errors are reported through pending JS exceptions and checked by hand, so
      # the addon never needs C++ unwinding (and stays -fno-exceptions like Node).
      "defines": [
        "NAPI_VERSION=8",
        "NODE_ADDON_API_DISABLE_CPP_EXCEPTIONS"
      ],
      # Node's common.gypi already adds -Wall -Wextra -fno-exceptions -fno-rtti.
      "configurations": {
        "Release": {
          # Node's common.gypi asks for -O3; -O2 is plenty for syscall wrappers and
          # keeps code size down (the hot loop, zero scanning, is memcmp in libc).
          "cflags!": [ "-O3" ],
          "cflags": [ "-O2" ]
        }
      },
      "xcode_settings": {
        "GCC_ENABLE_CPP_EXCEPTIONS": "NO",
        "CLANG_CXX_LIBRARY": "libc++",
        "MACOSX_DEPLOYMENT_TARGET": "10.15"
      },
      "msvs_settings": {
        "VCCLCompilerTool": { "ExceptionHandling": 0 }
      }
    }
  ]
}
