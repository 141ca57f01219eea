# Template: FEC-Small Mask R-CNN on your own COCO-format data.
#
# Copy it inside configs/ (its _base_ is a relative path) and change the two
# lines marked "yours"; everything else follows from them. Guide:
# docs/user_guides/own_data.md.
#   cp configs/fec_maskrcnn_custom_coco.py configs/my_maskrcnn.py
#   python tools/train.py configs/my_maskrcnn.py
# Data layout under data_root (mmdet's COCO layout):
#   annotations/instances_train2017.json, annotations/instances_val2017.json
#   train2017/*.jpg, val2017/*.jpg   (file_name in the json is relative to these)
# Other names: change train_ann/val_ann and train_img/val_img below.
_base_ = './fec_maskrcnn.py'

data_root = 'data/my_coco/'            # yours: the folder holding annotations/ and the images
classes = ('ball', 'box', 'flag')      # yours: the "name"s of the json's categories

# Label i is classes[i]: mmdet looks the names up in the json's categories
# (a name that is not there leaves no image and mmengine stops with
# "ValueError: need at least one array to concatenate").
metainfo = dict(classes=classes)
num_classes = len(classes)
train_ann = 'annotations/instances_train2017.json'
val_ann = 'annotations/instances_val2017.json'
train_img = 'train2017/'
val_img = 'val2017/'

# Both heads predict one score per class: num_classes in each.
model = dict(roi_head=dict(bbox_head=dict(num_classes=num_classes),
                           mask_head=dict(num_classes=num_classes)))
train_dataloader = dict(dataset=dict(data_root=data_root, metainfo=metainfo, ann_file=train_ann,
                                     data_prefix=dict(img=train_img)))
val_dataloader = dict(dataset=dict(data_root=data_root, metainfo=metainfo, ann_file=val_ann,
                                   data_prefix=dict(img=val_img)))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + val_ann)
test_evaluator = val_evaluator
# Start from ImageNet weights (docs/user_guides/checkpoints.md), e.g.
# model = dict(backbone=dict(init_cfg=dict(type='Pretrained', checkpoint='fec_small_mm.pth')))
