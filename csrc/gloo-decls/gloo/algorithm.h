// Stand-in (see README.md): ProcessGroupGloo.hpp includes it but names nothing from it.
#pragma once
#include "gloo/context.h"
