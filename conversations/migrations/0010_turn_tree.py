"""A conversation becomes a tree of turns with an active path.

Every existing conversation becomes a single path, every row kept: each turn's parent
is the turn before it, and every turn is chosen and on the path. The data step comes
last, after every change of the table (PostgreSQL refuses to alter a table with
pending foreign-key checks in the same transaction).
"""

import django.db.models.deletion
import django.db.models.functions.comparison
from django.db import migrations, models
from django.db.models import OuterRef, Subquery


def link_each_turn_to_the_one_before(apps, schema_editor):
    Turn = apps.get_model("conversations", "Turn")
    before = Turn.objects.filter(
        conversation_id=OuterRef("conversation_id"), position__lt=OuterRef("position")
    ).order_by("-position")
    Turn.objects.update(parent_id=Subquery(before.values("pk")[:1]))


class Migration(migrations.Migration):

    dependencies = [
        ('conversations', '0009_conversation_pinned_archived'),
    ]

    operations = [
        migrations.AlterModelOptions(
            name='turn',
            options={'ordering': ['conversation', 'position', 'pk']},
        ),
        migrations.RemoveConstraint(
            model_name='turn',
            name='turn_unique_position',
        ),
        migrations.AddField(
            model_name='turn',
            name='chosen',
            field=models.BooleanField(default=True),
        ),
        migrations.AddField(
            model_name='turn',
            name='on_path',
            field=models.BooleanField(default=True),
        ),
        migrations.AddField(
            model_name='turn',
            name='parent',
            field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.CASCADE, related_name='children', to='conversations.turn'),
        ),
        migrations.AddIndex(
            model_name='turn',
            index=models.Index(fields=['conversation', 'position'], name='turn_depth'),
        ),
        migrations.AddConstraint(
            model_name='turn',
            constraint=models.UniqueConstraint(condition=models.Q(('on_path', True)), fields=('conversation', 'position'), name='turn_path_position'),
        ),
        migrations.AddConstraint(
            model_name='turn',
            constraint=models.UniqueConstraint(models.F('conversation'), models.F('position'), django.db.models.functions.comparison.Coalesce(models.F('parent'), models.Value(0)), condition=models.Q(('chosen', True)), name='turn_one_chosen_version'),
        ),
        migrations.RunPython(link_each_turn_to_the_one_before, migrations.RunPython.noop),
    ]
