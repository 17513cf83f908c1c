// The module methods of fastinfer._C (python_fast.cpp): direct calls into the CPU ops for the eager forwards.
#pragma once
#include <Python.h>

namespace fastinfer {
namespace cpu {

PyMethodDef* python_fast_methods();

}  // namespace cpu
}  // namespace fastinfer
