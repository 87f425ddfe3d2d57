"""The original input pipeline, written from the recipe: PIL decode, albumentations on CPU
workers, two views per image (MoCo), in a torch DataLoader. Prints images/s as JSON.

    data_pipeline.py --files LIST --workers 2 --batch-size 32 --image-size 512
"""
import argparse
import json
import time

import albumentations as A
import cv2
import numpy as np
import torch
from PIL import Image


def recipe(size):
    return A.Compose([
        A.Resize(size, size, interpolation=cv2.INTER_LINEAR),
        A.OneOf([A.MedianBlur(blur_limit=3, p=0.2), A.MotionBlur(blur_limit=7, p=0.4),
                 A.Sharpen(alpha=(0.01, 0.2), lightness=(0.5, 1.0), p=0.4)], p=0.2),  # 1:2:2
        A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=(-0.2, 0.1), p=0.6),
        A.OneOf([A.GaussNoise(std_range=(0.0, 0.005 ** 0.5), p=1.0),
                 A.MultiplicativeNoise(multiplier=(0.9, 1.1), p=1.0)], p=0.2),
        A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.0, p=0.3),  # value shift
        A.Affine(translate_percent=(-0.0625, 0.0625), scale=(0.8, 1.2), rotate=(-10, 10),
                 border_mode=cv2.BORDER_REFLECT_101, p=0.2),
        A.OpticalDistortion(distort_limit=0.05, p=0.2),
        A.Normalize(mean=0.658, std=0.221, max_pixel_value=255.0),
    ])


class Pairs(torch.utils.data.Dataset):
    def __init__(self, files, size):
        self.files, self.aug = files, recipe(size)

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        img = np.asarray(Image.open(self.files[i]).convert("L"))
        views = [torch.from_numpy(self.aug(image=img)["image"])[None] for _ in range(2)]
        return views[0], views[1]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--files", required=True)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    files = [l.strip() for l in open(a.files) if l.strip()]
    loader = torch.utils.data.DataLoader(Pairs(files, a.image_size), batch_size=a.batch_size,
                                         num_workers=a.workers, drop_last=True, shuffle=True,
                                         persistent_workers=False)
    start = time.perf_counter()
    n = 0
    for q, k in loader:
        assert q.shape[1:] == (1, a.image_size, a.image_size)
        n += q.shape[0]
    elapsed = time.perf_counter() - start
    print(json.dumps({"images": n, "seconds": elapsed, "images_per_s": n / elapsed}))


if __name__ == "__main__":
    main()
